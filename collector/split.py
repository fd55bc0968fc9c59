"""Split an OTLP export request into per-trace fragments, touching each span once.

A fragment is complete ``TracesData.resource_spans`` entries (tag, length, ``ResourceSpans``)
holding only one trace's spans with their resource and scope, so that ``b"".join`` of a trace's
fragments is already a valid ``TracesData`` / ``ExportTraceServiceRequest`` body. Spans are
sliced out of the request body as they are (serialized by upb only when there is no body);
resources and scopes are serialized once per request; the nesting around them is written as
raw protobuf framing rather than by building new messages.

This runs for every span received, so a span that continues a run of adjacent spans of one
trace costs one table lookup of its first bytes and one comparison; checking IDs, slicing and
framing are done per run, per trace or per scope, where the interpreter's per-step cost is
spread over several spans.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_SPAN_TAG = 0x12  # ScopeSpans.spans: field 2, length-delimited
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


_NO_RUN = b"\x00"  # starts no span: protobuf has no field 0
_IDS = b"\x0a\x10"  # trace_id, 16 bytes: a span's first field as encoders write it
_SPAN_ID = b"\x12\x08"  # span_id, 8 bytes: its second
_PARENT = b"\x22\x08"  # parent_span_id, 8 bytes: its third, unless trace_state comes between
_ZERO_SPAN_ID = _SPAN_ID + _ZERO_SPAN
# A span's first 30 bytes as encoders write them: valid trace and span IDs, then a field's key.
_CANONICAL_IDS = re.compile(rb"\x0a\x10(?!\x00{16})(.{16})\x12\x08(?!\x00{8}).{8}..", re.DOTALL)
# The first 3 bytes of a span field (tag, length, and a first span byte that must be trace_id's
# when the length takes one byte) -> (where the span starts, where the field ends), relative to
# the field, for the spans the walk reads fastest: at least 30 bytes, so their IDs and the
# parent_span_id key lie inside; and under 16 KiB.
_SPAN_HEADS = {bytes((_SPAN_TAG, n, _IDS[0])): (2, 2 + n) for n in range(30, 0x80)} | {
    bytes((_SPAN_TAG, low, high)): (3, 3 + ((low & 0x7F) | high << 7)) for low in range(0x80, 0x100) for high in range(1, 0x80)
}


def _framing(message: object, present: bool, schema_url: str) -> tuple[bytes, bytes]:
    """The bytes before and after the spans of a ResourceSpans / ScopeSpans: its header message
    (field 1) and schema URL (field 3)."""
    head = field(_TAG_1, message.SerializeToString()) if present else b""  # type: ignore[attr-defined]
    tail = field(_TAG_3, schema_url.encode()) if schema_url else b""
    return head, tail


@dataclass(slots=True)
class Fragment:
    """One trace's share of one request, ready to append to the buffer.

    ``pieces``, joined, are one ``TracesData.resource_spans`` entry per resource the trace has
    spans under. A request carries spans of dozens of traces under each resource, and resources
    carry hundreds of bytes of attributes, so each resource message (and its schema URL) is one
    bytes object shared by every fragment of every request that carries it: a buffer that keeps
    the pieces as they are holds each resource once, not once per trace per request.
    """

    pieces: list[bytes]
    span_count: int
    has_root: bool

    @property
    def size(self) -> int:
        return sum(map(len, self.pieces))

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


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


Pieces = defaultdict[bytes, list[bytes]]  # trace ID -> the bytes of its share of a message, in order


def _split(request: ExportTraceServiceRequest, body: bytes | None, layout: "Layout | None") -> SplitResult:
    resources: Pieces = defaultdict(list)
    counts: defaultdict[bytes, int] = defaultdict(int)
    roots: set[bytes] = set()
    rejected = 0
    for ri, rs in enumerate(request.resource_spans):
        scopes: Pieces = defaultdict(list)
        for si, ss in enumerate(rs.scope_spans):
            spans: Pieces = defaultdict(list)
            refused = None if layout is None else _group_wire(body, *layout[ri][si], ss.spans, spans, counts, roots)  # type: ignore[arg-type]
            if refused is None:
                refused = _group_parsed(ss.spans, spans, counts, roots)
            rejected += refused
            if spans:
                _frame(_TAG_2, *_framing(ss.scope, ss.HasField("scope"), ss.schema_url), spans, scopes)
        if scopes:
            head, tail = _framing(rs.resource, rs.HasField("resource"), rs.schema_url)
            _frame(_TAG_1, _shared(head), _shared(tail), scopes, resources)
    fragments = {
        trace_id: Fragment(pieces, counts[trace_id], trace_id in roots) for trace_id, pieces in resources.items()
    }
    message = ""
    if rejected:
        message = f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
    return SplitResult(fragments, sum(counts.values()), rejected, message)


def _frame(tag: bytes, head: bytes, tail: bytes, inner: Pieces, outer: Pieces) -> None:
    """Wrap each trace's share of the inner messages in its own copy of the enclosing message
    (a field ``tag`` holding ``head``, the share, ``tail``) and add it, as four pieces that
    keep ``head`` and ``tail`` the objects given, to the trace's share of the outer message."""
    fixed = len(head) + len(tail)
    for trace_id, pieces in inner.items():
        payload = b"".join(pieces)
        outer[trace_id] += (tag + _length(fixed + len(payload)), head, payload, tail)


_SHARED: dict[bytes, bytes] = {}
_SHARED_MAX = 4096  # distinct resources kept for sharing; past this the table starts over


def _shared(envelope: bytes) -> bytes:
    """The one bytes object for every equal ``envelope`` seen lately."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(envelope, envelope)


def _valid(trace_id: bytes, span_id: bytes) -> bool:
    return len(trace_id) == 16 and len(span_id) == 8 and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def _group_parsed(spans: Any, grouped: Pieces, counts: defaultdict[bytes, int], roots: set[bytes]) -> int:
    """Group one scope's spans by serializing each (the path for bodies that were not protobuf)."""
    rejected = 0
    for span in spans:
        trace_id = span.trace_id
        if not _valid(trace_id, span.span_id):
            rejected += 1
            continue
        if not span.parent_span_id:
            roots.add(trace_id)
        counts[trace_id] += 1
        grouped[trace_id].append(field(_TAG_2, span.SerializeToString()))
    return rejected


class _Misaligned(Exception):
    """The bytes do not walk the way upb parsed them."""


def _group_wire(
    body: bytes, pos: int, end: int, spans: Any, grouped: Pieces, counts: defaultdict[bytes, int], roots: set[bytes]
) -> int | None:
    """Group one scope's spans by slicing span fields (tag, length, span) out of the body, walking
    the ScopeSpans bytes once; None when a span ID may be all zero (read the scope from the parse).

    A trace's spans usually sit next to each other (an SDK exports them as they end), so each
    run of adjacent spans of one trace is taken as one slice, and a span goes on the run when it
    starts with the same trace_id and a span_id field: one comparison. Encoders write a span's
    fields in field order, so its IDs sit at fixed places near its start; a span laid out
    otherwise is read from upb's parse.
    """
    if body.find(_ZERO_SPAN_ID, pos, end) >= 0:  # rare: a refused span, or those bytes inside a value
        return None
    cuts: list[tuple[bytes | None, int, int]] = []  # where runs start: (trace ID or None to leave out, position, span index)
    run_id = b""
    run_key = _NO_RUN  # the first 20 bytes of every span of the current run: trace_id and span_id's key
    index = 0
    heads = _SPAN_HEADS
    while pos < end:
        head = heads.get(body[pos : pos + 3])
        if head is not None:
            start = pos + head[0]
            field_end = pos + head[1]
            if body[start : start + 20] == run_key:
                if body[start + 28 : start + 30] != _PARENT and not spans[index].parent_span_id:
                    roots.add(run_id)  # rare (one root per trace): confirmed with the full parse
                index += 1
                pos = field_end
                continue
        elif body[pos] == _SPAN_TAG:  # a span under 30 bytes or over 16 KiB
            length, start = _read_varint(body, pos + 1)
            field_end = start + length
        else:  # not a span: the scope, its schema URL, an unknown field
            cuts.append((None, pos, index))
            run_key = _NO_RUN
            pos = _next_field(body, pos)[2]
            continue
        run_id, run_key = _ids(body, start, field_end, spans, index, roots)
        cuts.append((run_id, pos, index))
        index += 1
        pos = field_end
    if pos != end or index != len(spans):
        raise _Misaligned()
    cuts.append((None, end, index))
    rejected = 0
    for (trace_id, run_start, first), (_, run_end, after) in pairwise(cuts):
        if trace_id is None:
            rejected += after - first
        else:
            grouped[trace_id].append(body[run_start:run_end])
            counts[trace_id] += after - first
    return rejected


def _ids(body: bytes, start: int, end: int, spans: Any, index: int, roots: set[bytes]) -> tuple[bytes | None, bytes]:
    """The trace ID of span ``index``, in ``body[start:end]`` (None if refused), and the bytes that
    start every span of a run it begins (_NO_RUN for a span read from upb's parse: it runs alone)."""
    ids = _CANONICAL_IDS.match(body, start, end)
    if ids is not None:
        trace_id = ids[1]
        if body[start + 28 : start + 30] != _PARENT and not spans[index].parent_span_id:
            roots.add(trace_id)
        return trace_id, body[start : start + 20]
    span = spans[index]
    trace_id = span.trace_id
    if not _valid(trace_id, span.span_id):
        return None, _NO_RUN
    if not span.parent_span_id:
        roots.add(trace_id)
    return trace_id, _NO_RUN


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
