"""OTLP/JSON as the specification writes it: protobuf JSON, except that trace and span IDs are hex.

protobuf's ``json_format`` speaks base64 for bytes fields, so IDs are converted on the way in and
out; everything else (lowerCamelCase keys, int64 as strings or numbers, enums as integers,
unknown fields ignored) is what ``json_format`` already does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, TypeVar

import msgspec
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

M = TypeVar("M", bound=Message)

_SPAN_IDS = ("traceId", "spanId", "parentSpanId")
_LINK_IDS = ("traceId", "spanId")


class JsonDecodeError(ValueError):
    """The body is not OTLP/JSON."""


def _hex_to_b64(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        return ""  # an ID that is not hex is an invalid ID: the span is refused, not the request


def _b64_to_hex(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value).hex()
    except binascii.Error:
        return value


def _convert_ids(data: Any, convert: Callable[[Any], Any]) -> None:
    if not isinstance(data, dict):
        return
    for rs in data.get("resourceSpans") or ():
        for ss in (rs or {}).get("scopeSpans") or ():
            for span in (ss or {}).get("spans") or ():
                if not isinstance(span, dict):
                    continue
                for key in _SPAN_IDS:
                    if key in span:
                        span[key] = convert(span[key])
                for link in span.get("links") or ():
                    if isinstance(link, dict):
                        for key in _LINK_IDS:
                            if key in link:
                                link[key] = convert(link[key])


def parse_json(body: bytes, message: M) -> M:
    """Decode an OTLP/JSON body into ``message`` (a TracesData-shaped message)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise JsonDecodeError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JsonDecodeError("body must be a JSON object with a resourceSpans array")
    _convert_ids(data, _hex_to_b64)
    try:
        return json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise JsonDecodeError(f"body is not an OTLP/JSON trace request: {exc}") from None


def request_from_json(body: bytes) -> ExportTraceServiceRequest:
    return parse_json(body, ExportTraceServiceRequest())


def to_json(message: Message) -> bytes:
    """Encode a message as compact OTLP/JSON (hex IDs, integer enums)."""
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _convert_ids(data, _b64_to_hex)
    return msgspec.json.encode(data)
