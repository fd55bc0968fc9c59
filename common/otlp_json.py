"""OTLP/JSON as the specification writes it: protobuf JSON, except that trace and span IDs are hex.

protobuf's ``json_format`` speaks base64 for bytes fields, so IDs are converted on the way in and
out; everything else (lowerCamelCase keys, int64 as strings or numbers, enums as integers,
unknown fields ignored) is what ``json_format`` already does.

Whatever a body holds, decoding it either succeeds or raises ``JsonDecodeError`` saying what is
wrong and where: a field of the wrong shape (``"resourceSpans": 5``) or nesting deep enough to
exhaust the parser's recursion is bad input, answered 400, never an internal error.
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


def _items(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    """``parent[key]``, an array (absent or null: empty); JsonDecodeError naming it otherwise."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise JsonDecodeError(f"{where}{key} must be an array, got {_kind(value)}")
    return value


def _objects(parent: dict[str, Any], key: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The objects of the array ``parent[key]``, each with its path for messages."""
    out = []
    for index, item in enumerate(_items(parent, key, where)):
        path = f"{where}{key}[{index}]"
        if not isinstance(item, dict):
            raise JsonDecodeError(f"{path} must be an object, got {_kind(item)}")
        out.append((path, item))
    return out


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number" if isinstance(value, (int, float)) else "null")


def _convert_ids(data: dict[str, Any], convert: Callable[[Any], Any]) -> None:
    for rs_path, rs in _objects(data, "resourceSpans", ""):
        for ss_path, ss in _objects(rs, "scopeSpans", rs_path + "."):
            for span_path, span in _objects(ss, "spans", ss_path + "."):
                for key in _SPAN_IDS:
                    if key in span:
                        span[key] = convert(span[key])
                for _, link in _objects(span, "links", span_path + "."):
                    for key in _LINK_IDS:
                        if key in link:
                            link[key] = convert(link[key])


def parse_json(body: bytes, message: M) -> M:
    """Decode an OTLP/JSON body into ``message`` (a TracesData-shaped message)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise JsonDecodeError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonDecodeError("body is nested too deeply to be an OTLP/JSON request") from None
    if not isinstance(data, dict):
        raise JsonDecodeError(f"body must be a JSON object with a resourceSpans array, got {_kind(data)}")
    _convert_ids(data, _hex_to_b64)
    try:
        return json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise JsonDecodeError(f"body is not an OTLP/JSON trace request: {exc}") from None
    except RecursionError:
        raise JsonDecodeError("body is nested too deeply to be an OTLP/JSON request") from None


def request_from_json(body: bytes) -> ExportTraceServiceRequest:
    return parse_json(body, ExportTraceServiceRequest())


def to_json(message: Message) -> bytes:
    """Encode a message as compact OTLP/JSON (hex IDs, integer enums)."""
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    if "resourceSpans" in data:
        _convert_ids(data, _b64_to_hex)
    return msgspec.json.encode(data)
