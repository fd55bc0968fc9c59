"""Check an OTLP export request body and split it into per-trace fragments.

A fragment is complete ``TracesData.resource_spans`` entries (tag, length, ``ResourceSpans``)
holding only one trace's spans with their resource and scope, so that ``b"".join`` of a trace's
fragments is already a valid ``TracesData`` / ``ExportTraceServiceRequest`` body.

Every span received passes through here, so the per-span work is left to C:
1. One upb parse checks the whole body, as a receiver must before it answers. It parses into
   OTLP's own types except that ``ScopeSpans.spans`` is declared singular and the span's fields
   repeated: protobuf's merge rule then hands back each scope's spans as columns (trace IDs,
   span IDs, parent IDs), while every byte of every span is still checked against OTLP's schema
   (wire format, UTF-8 strings, nested messages).
2. A second parse only separates the span fields; their lengths say where each sits in the body.
3. A trace's spans usually sit next to each other (an SDK exports them as they end), so runs of
   one trace are found by comparing the trace ID column with itself shifted by one, and each run
   is sliced out of the body as it is.
The Python work left is per run: its slice, and the few bytes of framing that wrap it in its
scope and resource. Spans the columns cannot vouch for (an invalid ID, a span of 16 KiB or more,
other fields between spans) take a per-span path in the same scope, and a body whose fields the
walk cannot follow (unknown groups) is encoded again from the parse first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field as dataclass_field
from typing import Any
from itertools import accumulate, compress, count, islice, repeat
from operator import getitem, ne

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tailsampler.common.proto_types import FIELD, SPAN_FIELDS, FieldSpec, declare

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
# OTLP's ResourceSpans and ScopeSpans share one layout: field 1 is their envelope (the resource,
# the scope), field 2 their content (scope_spans, spans), field 3 their schema_url; TracesData's
# field 1 is resource_spans. All are length-delimited, so each key is one byte.
_ENVELOPE = 0x0A
_CONTENT = 0x12
_SCHEMA_URL = 0x1A
_ENVELOPE_TAG = bytes((_ENVELOPE,))
_CONTENT_TAG = bytes((_CONTENT,))
_PARENT = b"\x22\x08"  # parent_span_id, 8 bytes: a span's third field as encoders write it
_PARENT_AT = slice(28, 30)  # after trace_id (2 + 16 bytes) and span_id (2 + 8)
_OTLP = ".opentelemetry.proto."

_TYPES = declare(
    "tailsampler.split",
    [
        # OTLP's Span with every field repeated: a scope's spans merge into one message of columns
        ("SpanColumns", [field._replace(repeated=True) for field in SPAN_FIELDS]),
        ("CheckedScopeSpans", [
            FieldSpec(1, "scope", FIELD.TYPE_MESSAGE, False, _OTLP + "common.v1.InstrumentationScope"),
            FieldSpec(2, "spans", FIELD.TYPE_MESSAGE, False, "SpanColumns"),
            FieldSpec(3, "schema_url", FIELD.TYPE_STRING),
        ]),
        ("CheckedResourceSpans", [
            FieldSpec(1, "resource", FIELD.TYPE_MESSAGE, False, _OTLP + "resource.v1.Resource"),
            FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, True, "CheckedScopeSpans"),
            FieldSpec(3, "schema_url", FIELD.TYPE_STRING),
        ]),
        ("CheckedRequest", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, True, "CheckedResourceSpans")]),
        # each span's bytes, nothing else
        ("SpanBytesScope", [FieldSpec(2, "spans", FIELD.TYPE_BYTES, True)]),
        ("SpanBytesResource", [FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, True, "SpanBytesScope")]),
        ("SpanBytesRequest", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, True, "SpanBytesResource")]),
        ("SpanIds", [field for field in SPAN_FIELDS if field.name in ("trace_id", "span_id", "parent_span_id")]),
    ],
    ["opentelemetry/proto/trace/v1/trace.proto"],
)
_CheckedRequest = _TYPES["CheckedRequest"]
_SpanBytesRequest = _TYPES["SpanBytesRequest"]
_SpanIds = _TYPES["SpanIds"]


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [varint(n) for n in range(16384)]  # every length a span usually has: 1 or 2 bytes
_SPAN_FIELD_SIZES = [1 + len(v) + n for n, v in enumerate(_SMALL_VARINTS)]


def _length(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else varint(n)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, varint length, payload."""
    return tag + _length(len(payload)) + payload


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
    size: int = dataclass_field(init=False)  # bytes, counted once: every buffer asks for it twice

    def __post_init__(self) -> None:
        self.size = sum(map(len, self.pieces))

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


@dataclass(slots=True)
class SplitResult:
    """``root_resources`` counts the request's root spans by the resource field they were sent
    under (one shared bytes object per distinct resource), so that traces can be counted by
    their root's service once per resource rather than once per trace."""

    fragments: dict[bytes, Fragment]
    span_count: int
    rejected_spans: int
    error_message: str
    root_resources: dict[bytes, int] = dataclass_field(default_factory=dict)


def split_body(body: bytes) -> SplitResult:
    """Group the spans of an ExportTraceServiceRequest body by trace ID; spans with invalid IDs
    are refused and counted. A body that is not a valid request raises ``DecodeError``."""
    try:
        checked = _CheckedRequest.FromString(body)
    except DecodeError as exc:
        reason = str(exc).rpartition("': ")[2] or "malformed protobuf"
        raise DecodeError(reason) from None
    try:
        return _split(body, checked)
    except (_Misaligned, IndexError):  # fields the walk cannot follow: encode the parse again
        request = ExportTraceServiceRequest.FromString(body)
        request.DiscardUnknownFields()
        body = request.SerializeToString()
        return _split(body, _CheckedRequest.FromString(body))


def split_request(request: ExportTraceServiceRequest) -> SplitResult:
    """``split_body`` for a request that arrived as something else than protobuf (OTLP/JSON)."""
    return split_body(request.SerializeToString())


Run = tuple[bytes, bytes, int]  # trace ID, span fields as they are on the wire, how many spans


@dataclass(slots=True)
class _Scope:
    """One ScopeSpans, cut into runs of one trace each."""

    head: bytes  # the ScopeSpans' scope field(s), tag and length included
    tail: bytes  # its schema_url field(s)
    runs: list[Run]
    roots: list[bytes]  # the trace of each root span found here
    rejected: int = 0  # spans left out for invalid IDs


@dataclass(slots=True)
class _Grouping:
    """The request's fragments as they are built, resource by resource."""

    pieces: defaultdict[bytes, list[bytes]] = dataclass_field(default_factory=lambda: defaultdict(list))
    counts: defaultdict[bytes, int] = dataclass_field(default_factory=lambda: defaultdict(int))
    roots: set[bytes] = dataclass_field(default_factory=set)
    root_resources: defaultdict[bytes, int] = dataclass_field(default_factory=lambda: defaultdict(int))
    rejected: int = 0

    def add_resource(self, head: bytes, tail: bytes, scopes: list[_Scope]) -> None:
        """Give each trace its share of one ResourceSpans: each run is wrapped in the scope and
        resource framing directly when every trace has one run here (the usual case), and the
        runs of a trace are gathered first otherwise, so that a resource appears once per trace."""
        for scope in scopes:
            if scope.roots:
                self.roots.update(scope.roots)
                self.root_resources[head] += len(scope.roots)
            self.rejected += scope.rejected
        scopes = [scope for scope in scopes if scope.runs]
        pieces, counts = self.pieces, self.counts
        if len(scopes) == 1 and len(scopes[0].runs) == len({run[0] for run in scopes[0].runs}):
            scope = scopes[0]
            inner_fixed = len(scope.head) + len(scope.tail)
            outer_fixed = len(head) + len(tail) + 1  # + the scope field's tag
            tails = scope.tail + tail
            for trace_id, data, spans in scope.runs:
                inner = inner_fixed + len(data)
                inner_length = _length(inner)
                outer = _ENVELOPE_TAG + _length(outer_fixed + len(inner_length) + inner)
                pieces[trace_id] += (outer, head, _CONTENT_TAG + inner_length + scope.head, data, tails)
                counts[trace_id] += spans
            return
        shares: defaultdict[bytes, list[bytes]] = defaultdict(list)
        for scope in scopes:
            runs: defaultdict[bytes, list[bytes]] = defaultdict(list)
            for trace_id, data, spans in scope.runs:
                runs[trace_id].append(data)
                counts[trace_id] += spans
            for trace_id, parts in runs.items():
                shares[trace_id].append(field(_CONTENT_TAG, b"".join((scope.head, *parts, scope.tail))))
        for trace_id, parts in shares.items():
            share = b"".join(parts)
            pieces[trace_id] += (_ENVELOPE_TAG + _length(len(head) + len(share) + len(tail)), head, share, tail)

    def result(self) -> SplitResult:
        counts, roots = self.counts, self.roots
        fragments = {trace_id: Fragment(p, counts[trace_id], trace_id in roots) for trace_id, p in self.pieces.items()}
        message = ""
        if self.rejected:
            message = f"{self.rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
        return SplitResult(fragments, sum(counts.values()), self.rejected, message, dict(self.root_resources))


def _split(body: bytes, checked: Any) -> SplitResult:
    """``body`` cut into fragments, resource by resource, along upb's parse of it (``checked``)."""
    located = _SpanBytesRequest.FromString(body)
    grouping = _Grouping()
    resources = _layout_fields(body, 0, len(body))[_ENVELOPE]
    checked_resources = checked.resource_spans[:]
    located_resources = located.resource_spans[:]
    if not len(resources) == len(checked_resources) == len(located_resources):
        raise _Misaligned()
    for (_, start, end), rs, rs_spans in zip(resources, checked_resources, located_resources):
        fields = _layout_fields(body, start, end)
        scope_fields = fields[_CONTENT]
        checked_scopes = rs.scope_spans[:]
        located_scopes = rs_spans.scope_spans[:]
        if not len(scope_fields) == len(checked_scopes) == len(located_scopes):
            raise _Misaligned()
        scopes = [
            _scope(body, s_start, s_end, ss.spans, ss_spans.spans[:])
            for (_, s_start, s_end), ss, ss_spans in zip(scope_fields, checked_scopes, located_scopes)
        ]
        head, tail = _as_on_wire(body, fields[_ENVELOPE]), _as_on_wire(body, fields[_SCHEMA_URL])
        grouping.add_resource(_shared(head), _shared(tail), scopes)
    return grouping.result()


def _scope(body: bytes, start: int, end: int, columns: Any, spans: list[bytes]) -> _Scope:
    """One ScopeSpans' runs, cut from the body where the columns vouch for every span, and span
    by span where they do not."""
    n = len(spans)
    ids = columns.trace_id[:]
    span_ids = columns.span_id[:]
    framing = _ScopeFraming()
    first = framing.read_to_spans(body, start, end)
    try:  # where each span field starts, if they lie together, and where they end
        begin = list(accumulate(map(_SPAN_FIELD_SIZES.__getitem__, map(len, spans)), initial=first))
    except IndexError:  # a span of 16 KiB or more
        begin = []
    if (
        not n or not begin or not body.endswith(spans[-1], first, begin[-1])
        or framing.read_to_spans(body, begin[-1], end) != end  # another span field follows
        or len(ids) != n or len(span_ids) != n
        or _ZERO_TRACE in ids or _ZERO_SPAN in span_ids
        or set(map(len, ids)) != {16} or set(map(len, span_ids)) != {8}
    ):
        fields = _layout_fields(body, start, end)
        return _span_by_span(_as_on_wire(body, fields[_ENVELOPE]), _as_on_wire(body, fields[_SCHEMA_URL]), spans)
    starts = [0, *compress(count(1), map(ne, islice(ids, 1, None), ids))]
    runs = [(ids[a], body[begin[a] : begin[b]], b - a) for a, b in zip(starts, [*islice(starts, 1, None), n])]
    return _Scope(b"".join(framing.scope), b"".join(framing.schema_url), runs, _roots(ids, columns.parent_span_id[:], spans))


def _roots(ids: list[bytes], parents: list[bytes], spans: list[bytes]) -> list[bytes]:
    """The traces of a scope's root spans (those without a parent_span_id), from its columns.

    The parent column counts the spans that have a parent; the roots are the spans without one
    where encoders put it, unless others (a trace_state first) are among those, which their own
    parse tells apart, or a root lays out its fields otherwise, when every span's parse is read."""
    n = len(spans)
    parentless = n - len(parents) + parents.count(b"")
    if not parentless:
        return []
    roots = list(compress(count(), map(ne, map(getitem, spans, repeat(_PARENT_AT)), repeat(_PARENT))))
    if len(roots) != parentless:
        roots = _without_parent(spans, roots)
        if len(roots) != parentless:
            roots = _without_parent(spans, range(n))
    return [ids[i] for i in roots]


def _without_parent(spans: list[bytes], indexes: Iterable[int]) -> list[int]:
    return [i for i in indexes if not _SpanIds.FromString(spans[i]).parent_span_id]


def _span_by_span(head: bytes, tail: bytes, spans: list[bytes]) -> _Scope:
    """A scope as runs of one span each, read from each span's own parse; spans with invalid IDs
    are counted and left out."""
    scope = _Scope(head, tail, [], [])
    for span in spans:
        ids = _SpanIds.FromString(span)
        trace_id, span_id = ids.trace_id, ids.span_id
        if len(trace_id) != 16 or len(span_id) != 8 or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            scope.rejected += 1
            continue
        if not ids.parent_span_id:
            scope.roots.append(trace_id)
        scope.runs.append((trace_id, field(_CONTENT_TAG, span), 1))
    return scope


_SHARED: dict[bytes, bytes] = {}
_SHARED_MAX = 4096  # distinct resources kept for sharing; past this the table starts over


def _shared(envelope: bytes) -> bytes:
    """The one bytes object for every equal ``envelope`` seen lately."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(envelope, envelope)


class _Misaligned(Exception):
    """The bytes do not walk the way upb parsed them."""


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


Fields = dict[int, list[tuple[int, int, int]]]  # key -> (where the field starts, its value, its end)


def _layout_fields(buf: bytes, pos: int, end: int) -> Fields:
    """The envelope, content and schema_url fields of the message at ``buf[pos:end]``, in order;
    other fields, unknown to OTLP, are left out."""
    found: Fields = {_ENVELOPE: [], _CONTENT: [], _SCHEMA_URL: []}
    while pos < end:
        at = pos
        key, value, pos = _next_field(buf, pos)
        if key in found:
            found[key].append((at, value, pos))
    if pos != end:
        raise _Misaligned()
    return found


def _as_on_wire(buf: bytes, fields: list[tuple[int, int, int]]) -> bytes:
    """Fields as they are on the wire: tag and length included, every occurrence in order."""
    return b"".join([buf[at:end] for at, _, end in fields])


@dataclass(slots=True)
class _ScopeFraming:
    """A ScopeSpans' own fields (scope, schema_url) as they are on the wire, wherever they sit
    around its spans."""

    scope: list[bytes] = dataclass_field(default_factory=list)
    schema_url: list[bytes] = dataclass_field(default_factory=list)

    def read_to_spans(self, body: bytes, pos: int, end: int) -> int:
        """Take in the fields from ``pos`` up to the next span field (or the scope's end);
        returns where that is."""
        while pos < end and body[pos] != _CONTENT:
            at = pos
            key, _, pos = _next_field(body, pos)
            if key == _ENVELOPE:
                self.scope.append(body[at:pos])
            elif key == _SCHEMA_URL:
                self.schema_url.append(body[at:pos])
        return pos
