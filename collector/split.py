"""Split an OTLP export request into per-trace fragments, touching each span once.

A fragment is a complete ``TracesData.resource_spans`` entry (tag, length, ``ResourceSpans``)
holding only one trace's spans with their resource and scope, so that ``b"".join`` of a trace's
fragments is already a valid ``TracesData`` / ``ExportTraceServiceRequest`` body. Each span is
serialized once by upb; resources and scopes once per request; the nesting around them is
written as raw protobuf framing rather than by building new messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, varint length, payload."""
    return tag + _length(len(payload)) + payload


def _framing(message: object, present: bool, schema_url: str) -> tuple[bytes, bytes]:
    """The bytes before and after the spans of a ResourceSpans / ScopeSpans: its header message
    (field 1) and schema URL (field 3)."""
    head = field(_TAG_1, message.SerializeToString()) if present else b""  # type: ignore[attr-defined]
    tail = field(_TAG_3, schema_url.encode()) if schema_url else b""
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


def split_request(request: ExportTraceServiceRequest, body: bytes | None = None) -> SplitResult:
    """Group the request's spans by trace ID; spans with invalid IDs are refused and counted.

    ``body``, the bytes ``request`` was parsed from, lets each span be sliced out of the wire
    as it is instead of serialized again; without it (OTLP/JSON) upb serializes each span.
    """
    layout = _wire_layout(body, request) if body is not None else None
    if layout is not None:
        try:
            return _split(request, body, layout)
        except (_Misaligned, IndexError):  # the walk and upb's parse disagree: trust the parse
            pass
    return _split(request, None, None)


def _split(request: ExportTraceServiceRequest, body: bytes | None, layout: "Layout | None") -> SplitResult:
    pieces: dict[bytes, list[bytes]] = {}  # trace ID -> the bytes of its fragment, to join once
    counts: dict[bytes, int] = {}
    roots: set[bytes] = set()
    rejected = 0
    for ri, rs in enumerate(request.resource_spans):
        scoped: dict[bytes, tuple[list[bytes], list[int]]] = {}  # trace ID -> ScopeSpans pieces, length
        for si, ss in enumerate(rs.scope_spans):
            parts: dict[bytes, list[bytes]] = {}  # trace ID -> runs of framed spans in this scope
            if layout is None:
                rejected += _group_parsed(ss.spans, parts, counts, roots)
            else:
                start, end = layout[ri][si]
                rejected += _group_wire(body, start, end, ss.spans, parts, counts, roots)  # type: ignore[arg-type]
            if parts:
                head, tail = _framing(ss.scope, ss.HasField("scope"), ss.schema_url)
                fixed = len(head) + len(tail)
                for trace_id, framed in parts.items():
                    size = fixed + sum(map(len, framed))
                    prefix = _TAG_2 + _length(size)
                    entry = scoped.get(trace_id)
                    if entry is None:
                        entry = scoped[trace_id] = ([], [0])
                    entry[0].append(prefix)
                    entry[0].append(head)
                    entry[0].extend(framed)
                    entry[0].append(tail)
                    entry[1][0] += len(prefix) + size
        if scoped:
            head, tail = _framing(rs.resource, rs.HasField("resource"), rs.schema_url)
            fixed = len(head) + len(tail)
            for trace_id, (scope_pieces, (size,)) in scoped.items():
                out = pieces.get(trace_id)
                if out is None:
                    out = pieces[trace_id] = []
                out.append(_TAG_1 + _length(fixed + size))
                out.append(head)
                out.extend(scope_pieces)
                out.append(tail)
    fragments = {
        trace_id: Fragment(b"".join(framed), counts[trace_id], trace_id in roots)
        for trace_id, framed in pieces.items()
    }
    message = ""
    if rejected:
        message = f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
    return SplitResult(fragments, sum(counts.values()), rejected, message)


def _valid(trace_id: bytes, span_id: bytes) -> bool:
    return len(trace_id) == 16 and len(span_id) == 8 and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def _add(parts: dict[bytes, list[bytes]], counts: dict[bytes, int], trace_id: bytes, framed: bytes, spans: int) -> None:
    group = parts.get(trace_id)
    if group is None:
        parts[trace_id] = [framed]
    else:
        group.append(framed)
    counts[trace_id] = counts.get(trace_id, 0) + spans


def _group_parsed(spans: Any, parts: dict[bytes, list[bytes]], counts: dict[bytes, int], roots: set[bytes]) -> int:
    """Group one scope's spans by serializing each (the path for bodies that were not protobuf)."""
    rejected = 0
    for span in spans:
        trace_id = span.trace_id
        if not _valid(trace_id, span.span_id):
            rejected += 1
            continue
        if not span.parent_span_id:
            roots.add(trace_id)
        data = span.SerializeToString()
        _add(parts, counts, trace_id, _TAG_2 + _length(len(data)) + data, 1)
    return rejected


class _Misaligned(Exception):
    """The bytes do not walk the way upb parsed them."""


def _group_wire(
    body: bytes,
    scope_start: int,
    scope_end: int,
    spans: Any,
    parts: dict[bytes, list[bytes]],
    counts: dict[bytes, int],
    roots: set[bytes],
) -> int:
    """Group one scope's spans by slicing span fields (tag, length, span) out of the body, walking
    the ScopeSpans bytes once.

    A trace's spans usually sit next to each other (an SDK exports them as they end), so each
    run of adjacent spans of one trace is taken as one slice. Encoders write a span's fields in
    field order, so the trace ID, span ID and parent span ID sit at fixed places near its start;
    a span laid out otherwise is read from upb's parse.
    """
    rejected = 0
    run_id = b""
    run_from = run_to = run_spans = 0
    index = 0
    pos = scope_start
    while pos < scope_end:
        if body[pos] != 0x12:  # not a span: the scope, its schema URL, an unknown field
            pos = _next_field(body, pos)[2]
            continue
        field_start = pos
        length = body[pos + 1]
        if length < 0x80:
            start = pos + 2
        elif body[pos + 2] < 0x80:  # two-byte lengths: most spans
            length = (length & 0x7F) | (body[pos + 2] << 7)
            start = pos + 3
        else:
            length, start = _read_varint(body, pos + 1)
        end = pos = start + length
        index += 1
        if (
            length >= 28
            and body[start] == 0x0A
            and body[start + 1] == 16
            and body[start + 18] == 0x12
            and body[start + 19] == 8
        ):
            trace_id = body[start + 2 : start + 18]
            span_id = body[start + 20 : start + 28]
            at = start + 28
            if at < end and body[at] == 0x1A:  # trace_state comes before parent_span_id
                length, at = _read_varint(body, at + 1)
                at += length
            has_parent = at + 1 < end and body[at] == 0x22 and body[at + 1] != 0
            if not has_parent:  # rare (one root per trace): confirm with the full parse
                has_parent = bool(spans[index - 1].parent_span_id)
            if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
                rejected += 1
                continue
        else:
            span = spans[index - 1]
            trace_id, span_id, has_parent = span.trace_id, span.span_id, bool(span.parent_span_id)
            if not _valid(trace_id, span_id):
                rejected += 1
                continue
        if not has_parent:
            roots.add(trace_id)
        if trace_id == run_id and field_start == run_to:
            run_to = end
            run_spans += 1
            continue
        if run_spans:
            _add(parts, counts, run_id, body[run_from:run_to], run_spans)
        run_id, run_from, run_to, run_spans = trace_id, field_start, end, 1
    if pos != scope_end or index != len(spans):
        raise _Misaligned()
    if run_spans:
        _add(parts, counts, run_id, body[run_from:run_to], run_spans)
    return rejected


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _next_field(buf: bytes, pos: int) -> tuple[int, int, int]:
    """The field at ``pos``: (key, where its value starts, where the next field starts)."""
    key = buf[pos]
    if key < 0x80:
        pos += 1
    else:
        key, pos = _read_varint(buf, pos)
    wire = key & 7
    if wire == 2:
        length, pos = _read_varint(buf, pos)
        return key, pos, pos + length
    if wire == 0:
        return key, pos, _read_varint(buf, pos)[1]
    if wire == 1:
        return key, pos, pos + 8
    if wire == 5:
        return key, pos, pos + 4
    raise _Misaligned()  # groups: not in OTLP


def _fields(buf: bytes, start: int, end: int, number: int) -> list[tuple[int, int]]:
    """(value start, value end) of every length-delimited field ``number`` in ``buf[start:end]``."""
    out: list[tuple[int, int]] = []
    wanted = (number << 3) | 2
    pos = start
    while pos < end:
        key, value, pos = _next_field(buf, pos)
        if key == wanted:
            out.append((value, pos))
    if pos != end:
        raise _Misaligned()
    return out


Layout = list[list[tuple[int, int]]]


def _wire_layout(body: bytes, request: ExportTraceServiceRequest) -> Layout | None:
    """Where each ScopeSpans sits in ``body``, per resource, matched against upb's parse; None
    (serialize instead) when the two do not line up."""
    try:
        resources = _fields(body, 0, len(body), 1)
        if len(resources) != len(request.resource_spans):
            return None
        layout: Layout = []
        for (rs_start, rs_end), rs in zip(resources, request.resource_spans):
            scopes = _fields(body, rs_start, rs_end, 2)
            if len(scopes) != len(rs.scope_spans):
                return None
            layout.append(scopes)
        return layout
    except (_Misaligned, IndexError):
        return None
