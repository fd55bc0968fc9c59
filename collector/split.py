"""Split an OTLP export request into per-trace fragments, touching each span once.

A fragment is a complete ``TracesData.resource_spans`` entry (tag, length, ``ResourceSpans``)
holding only one trace's spans with their resource and scope, so that ``b"".join`` of a trace's
fragments is already a valid ``TracesData`` / ``ExportTraceServiceRequest`` body. Each span is
serialized once by upb; resources and scopes once per request; the nesting around them is
written as raw protobuf framing rather than by building new messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_TAG_1 = b"\x0a"  # field 1, length-delimited: resource / scope / TracesData.resource_spans
_TAG_2 = b"\x12"  # field 2, length-delimited: scope_spans / spans
_TAG_3 = b"\x1a"  # field 3, length-delimited: schema_url


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [varint(n) for n in range(16384)]  # every length a span usually has: 1 or 2 bytes


def _length(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _length(len(payload)) + payload


def _framing(message: object, present: bool, schema_url: str) -> tuple[bytes, bytes]:
    """The bytes before and after the spans of a ResourceSpans / ScopeSpans: its header message
    (field 1) and schema URL (field 3)."""
    head = _field(_TAG_1, message.SerializeToString()) if present else b""  # type: ignore[attr-defined]
    tail = _field(_TAG_3, schema_url.encode()) if schema_url else b""
    return head, tail


@dataclass(slots=True)
class Fragment:
    """One trace's share of one request, ready to append to the buffer."""

    data: bytes
    span_count: int
    has_root: bool


@dataclass(slots=True)
class SplitResult:
    fragments: dict[bytes, Fragment]
    span_count: int
    rejected_spans: int
    error_message: str


def split_request(request: ExportTraceServiceRequest) -> SplitResult:
    """Group the request's spans by trace ID; spans with invalid IDs are refused and counted."""
    entries: dict[bytes, list[bytes]] = {}  # trace ID -> its ResourceSpans entries, framed
    counts: dict[bytes, int] = {}
    roots: set[bytes] = set()
    rejected = 0
    for rs in request.resource_spans:
        scoped: dict[bytes, list[bytes]] = {}  # trace ID -> its ScopeSpans entries in this resource
        for ss in rs.scope_spans:
            parts: dict[bytes, list[bytes]] = {}  # trace ID -> framed spans in this scope
            for span in ss.spans:
                trace_id = span.trace_id
                span_id = span.span_id
                if len(trace_id) != 16 or len(span_id) != 8 or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
                    rejected += 1
                    continue
                if not span.parent_span_id:
                    roots.add(trace_id)
                data = span.SerializeToString()
                framed = parts.get(trace_id)
                if framed is None:
                    framed = parts[trace_id] = []
                framed += (_TAG_2, _length(len(data)), data)
            if parts:
                head, tail = _framing(ss.scope, ss.HasField("scope"), ss.schema_url)
                for trace_id, framed in parts.items():
                    counts[trace_id] = counts.get(trace_id, 0) + len(framed) // 3
                    scoped.setdefault(trace_id, []).append(_field(_TAG_2, b"".join((head, *framed, tail))))
        if scoped:
            head, tail = _framing(rs.resource, rs.HasField("resource"), rs.schema_url)
            for trace_id, scopes in scoped.items():
                entries.setdefault(trace_id, []).append(_field(_TAG_1, b"".join((head, *scopes, tail))))
    fragments = {
        trace_id: Fragment(b"".join(framed), counts[trace_id], trace_id in roots)
        for trace_id, framed in entries.items()
    }
    message = ""
    if rejected:
        message = f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
    return SplitResult(fragments, sum(counts.values()), rejected, message)
