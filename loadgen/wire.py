"""Protobuf wire encoding for generated spans and export requests.

The generator must cost little next to the collector it drives, so each span is written as its
few varying fields (IDs, timestamps) in front of a template serialized once per operation: name,
kind, attributes, status and flags never change between spans of one operation. Protobuf accepts
fields in any order, so the concatenation is a valid ``Span``.
"""

from __future__ import annotations

import struct

from tailsampler.common.framing import field

_TRACE_ID = b"\x0a\x10"  # Span.trace_id, 16 bytes
_SPAN_ID = b"\x12\x08"  # Span.span_id, 8 bytes
_PARENT_ID = b"\x22\x08"  # Span.parent_span_id, 8 bytes
_START = b"\x39"  # Span.start_time_unix_nano, fixed64
_END = b"\x41"  # Span.end_time_unix_nano, fixed64
_TIMES = struct.Struct("<Q")
_TAG_1 = b"\x0a"
_TAG_2 = b"\x12"


def encode_span(
    template: bytes, trace_id: bytes, span_id: bytes, parent_id: bytes, start_ns: int, end_ns: int
) -> bytes:
    """One span framed as a ``ScopeSpans.spans`` entry (tag and length included)."""
    body = b"".join(
        (
            _TRACE_ID,
            trace_id,
            _SPAN_ID,
            span_id,
            _PARENT_ID + parent_id if parent_id else b"",
            _START,
            _TIMES.pack(start_ns),
            _END,
            _TIMES.pack(end_ns),
            template,
        )
    )
    return field(_TAG_2, body)


def encode_resource_spans(resource: bytes, scope: bytes, framed_spans: list[bytes]) -> bytes:
    """One ``ExportTraceServiceRequest.resource_spans`` entry holding already framed spans."""
    scope_spans = field(_TAG_2, field(_TAG_1, scope) + b"".join(framed_spans))
    return field(_TAG_1, field(_TAG_1, resource) + scope_spans)
