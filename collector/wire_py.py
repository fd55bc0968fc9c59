"""The pure-Python wire core: the reference twin of the C walk (``_wire.c``), same interface.

Every span passes through here when the extension is not built, so no span costs an interpreter
step; the per-span work is left to upb, in four C passes over the request:

1. A parse into ``Located`` types that declare the path to the spans and take each span, the
   resource and scope fields and the schema URLs as bytes: it checks the request's framing down
   to the spans and hands back each span's bytes.
2. Each span's bytes are prefixed with every fact field at its default (``_DEFAULTS``) and the
   spans parsed again, as ``Checked`` types whose fact fields track presence: this checks each
   span's own framing, and protobuf's rules (the last occurrence of a singular field wins, a
   message field merges) make every span hold exactly one value of each fact field.
3. That parse is serialized again, so each span now carries each fact field exactly once.
4. A parse into ``Columns`` types, which declare ``resource_spans``, ``scope_spans`` and
   ``spans`` singular and the fact fields repeated, merges all spans into one message whose
   fields are columns with one entry per span, in span order.

Spans are then grouped by a stable sort of the trace ID column, and each trace's fragments are cut
from the spans' bytes and wrapped in their scope and resource. The checks are those of
``wire_check`` (which also words the error): the declared types hold no ``string`` field, so
UTF-8 is not checked, and no field that the walk does not read is declared a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import compress, count, islice, repeat
from operator import and_, contains, itemgetter, mul, ne, or_, sub

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from tailsampler.collector import wire_facts
from tailsampler.collector.wire_check import MAX_BODY, first_error
from tailsampler.collector.wire_errors import WireError

CORE = "python"
_FIELD = descriptor_pb2.FieldDescriptorProto
_B, _V, _F64, _F32, _I32, _M = (
    _FIELD.TYPE_BYTES, _FIELD.TYPE_UINT64, _FIELD.TYPE_FIXED64, _FIELD.TYPE_FIXED32, _FIELD.TYPE_INT32, _FIELD.TYPE_MESSAGE,
)
_ONE, _REPEATED, _PRESENT = "one", "repeated", "present"  # singular, repeated, singular tracking presence


def _declare(package: str, messages: Sequence[tuple[str, Sequence[tuple[int, str, int, str, str]]]]) -> dict[str, type]:
    """Message classes for ``messages``: (name, [(number, field name, type, label, message type)])."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto3")
    for name, fields in messages:
        message = file.message_type.add(name=name)
        for number, field_name, kind, label, type_name in fields:
            repeated = _FIELD.LABEL_REPEATED if label == _REPEATED else _FIELD.LABEL_OPTIONAL
            field = message.field.add(name=field_name, number=number, type=kind, label=repeated)
            if label == _PRESENT:  # proto3 ``optional``: a synthetic oneof of its own
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field_name}")
            if type_name:
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.Default()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name, _ in messages}


# The span fields the walk does not read, declared by wire type so that upb copies none aside.
_UNREAD = [(5, "name", _B), (6, "kind", _V), (9, "attributes", _B), (10, "dropped_attributes_count", _V),
           (11, "events", _B), (12, "dropped_events_count", _V), (13, "links", _B), (14, "dropped_links_count", _V)]


_LISTS = (9, 11, 13)  # attributes, events, links: repeated in OTLP


def _span(label: str, status: str, ids: str = "", lists: str = _ONE, numbers: tuple[int, int] = (_F64, _F32)) -> list[
    tuple[int, str, int, str, str]
]:
    """A span type: the fact fields ``label`` (the IDs ``ids`` when given), the times and flags of
    the types ``numbers``, the fields the walk does not read singular or, for OTLP's repeated
    ones, ``lists``."""
    return [
        (1, "trace_id", _B, ids or label, ""), (2, "span_id", _B, ids or label, ""), (3, "trace_state", _B, label, ""),
        (4, "parent_span_id", _B, label, ""), (7, "start_time_unix_nano", numbers[0], label, ""),
        (8, "end_time_unix_nano", numbers[0], label, ""), (15, "status", _M, _ONE, status),
        (16, "flags", numbers[1], label, ""),
        *[(number, name, kind, lists if number in _LISTS else _ONE, "") for number, name, kind in _UNREAD],
    ]


def _envelopes(name: str, child: str, label: str, fields: str) -> list[tuple[str, list[tuple[int, str, int, str, str]]]]:
    """ScopeSpans, ResourceSpans and the request around spans of type ``child``: ``label`` for
    each level's child field; the resource, scope and schema URL fields as ``fields``, or absent."""

    def envelope(head: str, child_field: str, child_type: str) -> list[tuple[int, str, int, str, str]]:
        own = [(1, head, _B, fields, ""), (3, "schema_url", _B, fields, "")] if fields else []
        return [*own[:1], (2, child_field, _M, label, child_type), *own[1:]]

    return [
        (f"{name}ScopeSpans", envelope("scope", "spans", child)),
        (f"{name}ResourceSpans", envelope("resource", "scope_spans", f"{name}ScopeSpans")),
        (f"{name}Request", [(1, "resource_spans", _M, label, f"{name}ResourceSpans")]),
    ]


_TYPES = _declare("tailsampler.wire", [
    ("LocatedScopeSpans", [(1, "scope", _B, _REPEATED, ""), (2, "spans", _B, _REPEATED, ""), (3, "schema_url", _B, _REPEATED, "")]),
    ("LocatedResourceSpans", [
        (1, "resource", _B, _REPEATED, ""), (2, "scope_spans", _M, _REPEATED, "LocatedScopeSpans"),
        (3, "schema_url", _B, _REPEATED, ""),
    ]),
    ("LocatedRequest", [(1, "resource_spans", _M, _REPEATED, "LocatedResourceSpans")]),
    # the check: every field on the path to the spans, as OTLP has them (protobuf's rules)
    ("PlainStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _ONE, "")]),
    ("PlainSpan", _span(_ONE, "PlainStatus", lists=_REPEATED)),
    *_envelopes("Plain", "PlainSpan", _REPEATED, _REPEATED),
    # a canonical request's trace and span ID columns, and any length-delimited fact number
    ("IdStatus", [(2, "message", _B, _ONE, ""), (3, "code", _B, _REPEATED, "")]),
    ("IdSpans", _span(_REPEATED, "IdStatus", numbers=(_B, _B))),
    *_envelopes("Id", "IdSpans", _ONE, ""),
    # one trace's spans of a canonical request, merged into columns
    ("TraceStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _REPEATED, "")]),
    ("TraceSpans", _span(_REPEATED, "TraceStatus", ids=_ONE)),
    ("TraceScopeSpans", [(2, "spans", _M, _ONE, "TraceSpans")]),
    # the spans prefixed with the fact fields' defaults, each holding each one exactly once
    ("CheckedStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _PRESENT, "")]),
    ("CheckedSpan", _span(_PRESENT, "CheckedStatus")),
    *_envelopes("Checked", "CheckedSpan", _REPEATED, ""),
    ("ColumnStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _REPEATED, "")]),
    ("ColumnSpans", _span(_REPEATED, "ColumnStatus")),
    *_envelopes("Column", "ColumnSpans", _ONE, ""),
])
_Located, _Plain, _Ids, _TraceSpans, _Checked, _Columns = (
    _TYPES[name] for name in ("LocatedRequest", "PlainRequest", "IdRequest", "TraceScopeSpans", "CheckedRequest", "ColumnRequest")
)

# trace_id, span_id, trace_state, parent_span_id empty; start, end 0; status {code: 0}; flags 0
_DEFAULTS = b"\x0a\x00\x12\x00\x1a\x00\x22\x00\x39" + bytes(8) + b"\x41" + bytes(8) + b"\x7a\x02\x18\x00\x85\x01" + bytes(4)
_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
merge_facts = wire_facts.merge


def fnv1a_64(data: bytes, state: int = 0xCBF29CE484222325) -> int:
    """FNV-1a 64 of ``data`` continuing from ``state`` (the offset basis, or a salt's hash)."""
    for byte in data:
        state = ((state ^ byte) * _FNV_PRIME) & _MASK64
    return state


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TABLE = 16384  # every length a span usually has
_LENGTHS = [varint(n) for n in range(_TABLE)]
_SPAN_TAGS = [b"\x12" + v for v in _LENGTHS]  # a span's tag and length in ScopeSpans
_PREFIXED = [b"\x12" + varint(n + len(_DEFAULTS)) + _DEFAULTS for n in range(_TABLE)]
_CODE_BITS = wire_facts.STATUS_BITS
_RECORD = wire_facts.RECORD


def _length(n: int) -> bytes:
    return _LENGTHS[n] if n < _TABLE else varint(n)


def _each(table: list[bytes], make: Callable[[int], bytes], lengths: list[int]) -> Iterator[bytes]:
    """``make`` of each length, from ``table`` when every length is within it (as usual)."""
    return map(table.__getitem__, lengths) if max(lengths, default=0) < _TABLE else map(make, lengths)


def _span_tag(n: int) -> bytes:
    return _SPAN_TAGS[n] if n < _TABLE else b"\x12" + varint(n)


def _prefixed(n: int) -> bytes:
    return _PREFIXED[n] if n < _TABLE else b"\x12" + varint(n + len(_DEFAULTS)) + _DEFAULTS


def _framed(tag: bytes, payloads: list[bytes]) -> bytes:
    """Each payload as a length-delimited field ``tag``, in a minimal encoding."""
    return b"".join([tag + _length(len(p)) + p for p in payloads])


_SHARED: dict[bytes, bytes] = {}
_SHARED_MAX = 4096  # distinct resources kept for sharing; past this the table starts over


def _shared(head: bytes) -> bytes:
    """The one bytes object for every equal resource ``head`` seen lately."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(head, head)


@dataclass(slots=True)
class Fragment:
    """One trace's share of one request: ``pieces``, joined, are ``TracesData.resource_spans``
    entries; each resource's fields are one bytes object shared by every fragment of every request
    that carries it, between pieces of the fragment's own bytes. ``facts`` is its facts record."""

    pieces: list[bytes]
    facts: bytes

    @property
    def size(self) -> int:
        return int.from_bytes(self.facts[8:16], "little")

    @property
    def span_count(self) -> int:
        return int.from_bytes(self.facts[4:8], "little")

    @property
    def has_root(self) -> bool:
        return bool(self.facts[1] & wire_facts.ROOT)

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


def split(body: bytes) -> tuple[dict[bytes, Fragment], int, int]:
    """(fragments by trace ID, spans accepted, spans refused) of an export request body; a body
    the walk refuses raises ``WireError``.

    A request as encoders write them (each field once, in its shortest form) is split through
    its ID columns and one parse per trace for the facts; any other goes through the parses that
    give each span exactly one value of each fact field (``split_exactly``)."""
    request = _located(body)
    if not request.payloads:
        return {}, 0, 0
    if request.canonical:
        split = _split_canonical(body, request)
        if split is not None:
            return split
    return _split_exactly(request)


def split_exactly(body: bytes) -> tuple[dict[bytes, Fragment], int, int]:
    """``split`` through the parses that hold for any layout; the same result, more slowly."""
    request = _located(body)
    return _split_exactly(request) if request.payloads else ({}, 0, 0)


def _located(body: bytes) -> _Request:
    if len(body) > MAX_BODY:
        raise WireError(first_error(body))
    try:
        plain = _Plain.FromString(body)
        located = _Located.FromString(body)
    except DecodeError:
        raise WireError(first_error(body) or "malformed protobuf") from None
    # A serialization as long as the body means no field occurred twice (protobuf keeps one),
    # none held its default or an over-long varint (protobuf writes neither).
    return _Request(located, plain.ByteSize() == len(body))


def _split_canonical(body: bytes, request: _Request) -> tuple[dict[bytes, Fragment], int, int] | None:
    """The split of a request whose spans hold each field at most once, or None when a fact
    number is length-delimited (a type of columns would read it as packed numbers) or a span has
    no trace or span ID (it is refused by the exact split)."""
    spans = _Ids.FromString(body).resource_spans.scope_spans.spans  # type: ignore[attr-defined]
    if len(spans.start_time_unix_nano) or len(spans.end_time_unix_nano) or len(spans.flags) or len(spans.status.code):
        return None
    ids, span_ids = spans.trace_id[:], spans.span_id[:]
    payloads, scope_of = request.payloads, request.scope_of
    if len(ids) != len(payloads) or len(span_ids) != len(payloads):
        return None
    refused = 0
    if not _all_valid(ids, span_ids):
        valid = list(map(_valid, ids, span_ids))
        refused = valid.count(False)
        ids, payloads, scope_of = (list(compress(column, valid)) for column in (ids, payloads, scope_of))
    parts = _framed_spans(payloads)
    cuts = _cuts(ids, scope_of)
    runs: dict[bytes, list[tuple[int, bytes, int]]] = {}  # by trace: (scope, framed spans, how many)
    for a, b in zip(cuts, islice(cuts, 1, None)):
        runs.setdefault(ids[a], []).append((scope_of[a], b"".join(parts[2 * a : 2 * b]), b - a))
    fragments = {}
    for trace_id, trace_runs in runs.items():
        pieces, size = _assemble(request, trace_runs)
        spans_count = sum(run[2] for run in trace_runs)
        fragments[trace_id] = Fragment(pieces, _facts(b"".join([run[1] for run in trace_runs]), spans_count, size))
    return fragments, len(ids), refused


def _facts(framed: bytes, spans: int, size: int) -> bytes:
    """The facts record of one trace's spans of a canonical request (``framed``, as ScopeSpans'
    span fields): each field occurs at most once and never with its default, so a fact field's
    column is shorter than the spans exactly when some span lacks it."""
    columns = _TraceSpans.FromString(framed).spans  # type: ignore[attr-defined]
    codes = columns.status.code[:]
    bits = reduce(or_, map(_CODE_BITS.get, codes, repeat(wire_facts.STATUS_OTHER)), 0)
    if len(codes) < spans:
        bits |= _CODE_BITS[0]
    if len(columns.parent_span_id) < spans:
        bits |= wire_facts.ROOT
    if len(columns.trace_state):
        bits |= wire_facts.TRACE_STATE
    if 1 in map(and_, columns.flags[:], repeat(1)):
        bits |= wire_facts.SAMPLED
    starts = columns.start_time_unix_nano[:]
    start = min(starts) if len(starts) == spans else 0
    return _RECORD.pack(wire_facts.FACTS_VERSION, bits, 0, spans, size, start, max(columns.end_time_unix_nano[:], default=0))


def _split_exactly(request: _Request) -> tuple[dict[bytes, Fragment], int, int]:
    checked = _Checked.FromString(request.prefixed())
    ids, span_ids, parents, states, starts, ends, codes, flags = _columns(checked, len(request.payloads))
    rows = [request.payloads, request.scope_of, parents, states, starts, ends,
            list(map(_CODE_BITS.get, codes, repeat(wire_facts.STATUS_OTHER))), flags]
    refused = 0
    if not _all_valid(ids, span_ids):
        valid = list(map(_valid, ids, span_ids))
        refused = valid.count(False)
        ids = list(compress(ids, valid))
        rows = [list(compress(row, valid)) for row in rows]
    if not ids:
        return {}, 0, refused
    return _Traces(request, ids, rows).fragments(), len(ids), refused


def _columns(checked: object, n: int) -> list[list]:
    """The fact fields of every span, one column each. Fields the checking parse kept as unknown
    are left in its serialization; only a length-delimited occurrence of a fact field that is a
    number can change the columns (their type reads it as packed numbers), which their lengths
    show, and then the parse is serialized again without its unknown fields."""
    try:
        columns = _read_columns(checked)
        if all(len(column) == n for column in columns):
            return columns
    except DecodeError:
        pass
    checked.DiscardUnknownFields()  # type: ignore[attr-defined]
    return _read_columns(checked)


def _read_columns(checked: object) -> list[list]:
    spans = _Columns.FromString(checked.SerializeToString()).resource_spans.scope_spans.spans  # type: ignore[attr-defined]
    return [spans.trace_id[:], spans.span_id[:], spans.parent_span_id[:], spans.trace_state[:],
            spans.start_time_unix_nano[:], spans.end_time_unix_nano[:], spans.status.code[:], spans.flags[:]]


def _all_valid(ids: list[bytes], span_ids: list[bytes]) -> bool:
    return set(map(len, ids)) == {16} and set(map(len, span_ids)) == {8} and _ZERO_TRACE not in ids and _ZERO_SPAN not in span_ids


def _valid(trace_id: bytes, span_id: bytes) -> bool:
    return len(trace_id) == 16 and len(span_id) == 8 and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def _framed_spans(payloads: list[bytes]) -> list[bytes]:
    """Each span's tag and length, then its bytes, as a ScopeSpans' span field."""
    return _interleave(list(_each(_SPAN_TAGS, _span_tag, list(map(len, payloads)))), payloads)


def _cuts(ids: list[bytes], scope_of: list[int]) -> list[int]:
    """Where runs of one trace's spans in one scope start, and the end."""
    changes = map(or_, map(ne, islice(ids, 1, None), ids), map(ne, islice(scope_of, 1, None), scope_of))
    return [0, *compress(count(1), changes), len(ids)]


class _Request:
    """What the located parse says of a request: each resource's shared head (its resource and
    schema_url fields), each scope's head and resource, every span's bytes and scope; and whether
    the request is canonical (each field at most once, none at its default, shortest varints)."""

    def __init__(self, located: object, canonical: bool) -> None:
        self.canonical = canonical
        self.heads: list[bytes] = []
        self.scope_heads: list[bytes] = []
        self.scope_resource: list[int] = []
        self.scope_spans: list[list[bytes]] = []
        self.payloads: list[bytes] = []
        self.scope_of: list[int] = []
        for index, rs in enumerate(located.resource_spans[:]):  # type: ignore[attr-defined]
            self.heads.append(_shared(_framed(b"\x0a", rs.resource[:]) + _framed(b"\x1a", rs.schema_url[:])))
            for ss in rs.scope_spans[:]:
                spans = ss.spans[:]
                self.scope_of += repeat(len(self.scope_heads), len(spans))
                self.scope_heads.append(_framed(b"\x0a", ss.scope[:]) + _framed(b"\x1a", ss.schema_url[:]))
                self.scope_resource.append(index)
                self.scope_spans.append(spans)
                self.payloads += spans

    def prefixed(self) -> bytes:
        """The spans, each prefixed with the fact fields at their defaults, in their resources and
        scopes (without their fields), as a request for the exact parse."""
        resources: list[list[bytes]] = [[] for _ in self.heads]
        for resource, spans in zip(self.scope_resource, self.scope_spans):
            parts = _interleave(list(_each(_PREFIXED, _prefixed, list(map(len, spans)))), spans)
            scope = b"".join(parts)
            resources[resource].append(b"\x12" + _length(len(scope)) + scope)
        return b"".join(b"\x0a" + _length(len(inner)) + inner for inner in map(b"".join, resources))


def _assemble(request: _Request, runs: list[tuple[int, bytes, int]]) -> tuple[list[bytes], int]:
    """One trace's pieces and size from its runs (scope, framed spans, count) in request order: per
    resource, the entry's tag and length, the shared head, and a ScopeSpans per scope; the bytes
    between shared heads are joined into one piece."""
    pieces: list[bytes] = []
    own: list[bytes] = []  # bytes since the last shared head
    size, i = 0, 0
    while i < len(runs):
        resource = request.scope_resource[runs[i][0]]
        scopes: list[bytes] = []
        while i < len(runs) and request.scope_resource[runs[i][0]] == resource:
            scope = runs[i][0]
            body = [request.scope_heads[scope]]
            while i < len(runs) and runs[i][0] == scope:
                body.append(runs[i][1])
                i += 1
            scopes += (b"\x12", _length(sum(map(len, body))), *body)
        head = request.heads[resource]
        length = len(head) + sum(map(len, scopes))
        tag = b"\x0a" + _length(length)
        size += len(tag) + length
        own.append(tag)
        if head:
            pieces += (b"".join(own), head)
            own = []
        own += scopes
    pieces.append(b"".join(own))
    return pieces, size


class _Traces:
    """The accepted spans of any request grouped by trace: a stable sort of the trace ID column
    keeps each trace's spans in request order."""

    def __init__(self, request: _Request, ids: list[bytes], rows: list[list]) -> None:
        self.request = request
        n = len(ids)
        self.order = order = sorted(range(n), key=ids.__getitem__)
        pick = _picker(order)
        self.ids = ids = pick(ids)
        (payloads, self.scope_of, self.parents, self.states, self.starts, self.ends, self.codes,
         flags) = map(pick, rows)
        self.sampled = list(map(and_, flags, repeat(1)))
        self.parts = _framed_spans(payloads)
        self.trace_cuts = [0, *compress(count(1), map(ne, islice(ids, 1, None), ids)), n]
        self.group_cuts = _cuts(ids, self.scope_of)

    def fragments(self) -> dict[bytes, Fragment]:
        """Each trace's fragment, in the order of the traces' first spans in the request."""
        cuts = self.trace_cuts
        starts, ends = cuts[:-1], cuts[1:]
        runs: list[list[tuple[int, bytes, int]]] = [[] for _ in starts]
        trace = -1
        for a, b in zip(self.group_cuts, islice(self.group_cuts, 1, None)):
            if trace + 1 < len(starts) and a == starts[trace + 1]:
                trace += 1
            runs[trace].append((self.scope_of[a], b"".join(self.parts[2 * a : 2 * b]), b - a))
        pieces, sizes = zip(*(_assemble(self.request, trace_runs) for trace_runs in runs))
        records = list(map(_RECORD.pack, repeat(wire_facts.FACTS_VERSION), self._bits(starts, ends), repeat(0),
                           map(sub, ends, starts), sizes, map(min, self._slices(self.starts, starts, ends)),
                           map(max, self._slices(self.ends, starts, ends))))
        firsts = _picker(starts)(self.order)
        by_first = sorted(range(len(starts)), key=firsts.__getitem__)
        return {self.ids[starts[k]]: Fragment(pieces[k], records[k]) for k in by_first}

    @staticmethod
    def _slices(column: list, starts: list[int], ends: list[int]) -> Iterator[list]:
        return map(column.__getitem__, map(slice, starts, ends))

    def _bits(self, starts: list[int], ends: list[int]) -> Iterator[int]:
        """Each trace's facts bits: status codes seen, root, trace state, sampled flag."""
        codes = map(reduce, repeat(or_), self._slices(self.codes, starts, ends))
        roots = map(mul, map(contains, self._slices(self.parents, starts, ends), repeat(b"")), repeat(wire_facts.ROOT))
        states = map(mul, map(any, self._slices(self.states, starts, ends)), repeat(wire_facts.TRACE_STATE))
        sampled = map(mul, map(contains, self._slices(self.sampled, starts, ends), repeat(1)), repeat(wire_facts.SAMPLED))
        return map(or_, map(or_, codes, roots), map(or_, states, sampled))


def _picker(indexes: list[int]) -> Callable[[Sequence], list]:
    """A function that takes ``values[i]`` for each ``i`` in ``indexes``, in one C loop."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda values: [values[index]]
    get = itemgetter(*indexes)
    return lambda values: list(get(values))


def _interleave(evens: list, odds: list) -> list:
    out = [b""] * (len(evens) + len(odds))
    out[::2] = evens
    out[1::2] = odds
    return out
