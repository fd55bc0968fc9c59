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
from itertools import accumulate, chain, compress, count, islice, repeat
from operator import add, and_, contains, eq, gt, itemgetter, mul, ne, or_, sub

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


def _span(label: str, status: str) -> list[tuple[int, str, int, str, str]]:
    return [
        (1, "trace_id", _B, label, ""), (2, "span_id", _B, label, ""), (3, "trace_state", _B, label, ""),
        (4, "parent_span_id", _B, label, ""), (7, "start_time_unix_nano", _F64, label, ""),
        (8, "end_time_unix_nano", _F64, label, ""), (15, "status", _M, _ONE, status), (16, "flags", _F32, label, ""),
        *[(number, name, kind, _ONE, "") for number, name, kind in _UNREAD],
    ]


_TYPES = _declare("tailsampler.wire", [
    ("LocatedScopeSpans", [(1, "scope", _B, _REPEATED, ""), (2, "spans", _B, _REPEATED, ""), (3, "schema_url", _B, _REPEATED, "")]),
    ("LocatedResourceSpans", [
        (1, "resource", _B, _REPEATED, ""), (2, "scope_spans", _M, _REPEATED, "LocatedScopeSpans"),
        (3, "schema_url", _B, _REPEATED, ""),
    ]),
    ("LocatedRequest", [(1, "resource_spans", _M, _REPEATED, "LocatedResourceSpans")]),
    ("CheckedStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _PRESENT, "")]),
    ("CheckedSpan", _span(_PRESENT, "CheckedStatus")),
    ("CheckedScopeSpans", [(2, "spans", _M, _REPEATED, "CheckedSpan")]),
    ("CheckedResourceSpans", [(2, "scope_spans", _M, _REPEATED, "CheckedScopeSpans")]),
    ("CheckedRequest", [(1, "resource_spans", _M, _REPEATED, "CheckedResourceSpans")]),
    ("ColumnStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _REPEATED, "")]),
    ("ColumnSpans", _span(_REPEATED, "ColumnStatus")),
    ("ColumnScopeSpans", [(2, "spans", _M, _ONE, "ColumnSpans")]),
    ("ColumnResourceSpans", [(2, "scope_spans", _M, _ONE, "ColumnScopeSpans")]),
    ("ColumnRequest", [(1, "resource_spans", _M, _ONE, "ColumnResourceSpans")]),
])
_Located, _Checked, _Columns = _TYPES["LocatedRequest"], _TYPES["CheckedRequest"], _TYPES["ColumnRequest"]

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
    the walk refuses raises ``WireError``."""
    if len(body) > MAX_BODY:
        raise WireError(first_error(body))
    try:
        request = _Request(_Located.FromString(body))
        checked = _Checked.FromString(request.prefixed)
    except DecodeError:
        raise WireError(first_error(body) or "malformed protobuf") from None
    if not request.payloads:
        return {}, 0, 0
    ids, span_ids, parents, states, starts, ends, codes, flags = _columns(checked, len(request.payloads))
    rows = [request.payloads, request.scope_of, parents, states, starts, ends,
            list(map(_CODE_BITS.get, codes, repeat(wire_facts.STATUS_OTHER))), flags]
    refused = 0
    if not (set(map(len, ids)) == {16} and set(map(len, span_ids)) == {8} and _ZERO_TRACE not in ids and _ZERO_SPAN not in span_ids):
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


def _valid(trace_id: bytes, span_id: bytes) -> bool:
    return len(trace_id) == 16 and len(span_id) == 8 and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


class _Request:
    """What the located parse says of a request: each resource's shared head (its resource and
    schema_url fields), each scope's head and resource, every span's bytes and scope, and the
    spans prefixed with the fact fields' defaults, framed as a request, for the checking parse."""

    def __init__(self, located: object) -> None:
        self.heads: list[bytes] = []
        self.scope_heads: list[bytes] = []
        self.scope_resource: list[int] = []
        self.payloads: list[bytes] = []
        self.scope_of: list[int] = []
        resources = []
        for index, rs in enumerate(located.resource_spans[:]):  # type: ignore[attr-defined]
            self.heads.append(_shared(_framed(b"\x0a", rs.resource[:]) + _framed(b"\x1a", rs.schema_url[:])))
            inner = []
            for ss in rs.scope_spans[:]:
                spans = ss.spans[:]
                self.scope_of += repeat(len(self.scope_heads), len(spans))
                self.scope_heads.append(_framed(b"\x0a", ss.scope[:]) + _framed(b"\x1a", ss.schema_url[:]))
                self.scope_resource.append(index)
                self.payloads += spans
                parts = [b""] * (2 * len(spans))
                parts[::2] = _each(_PREFIXED, _prefixed, list(map(len, spans)))
                parts[1::2] = spans
                scope = b"".join(parts)
                inner.append(b"\x12" + _length(len(scope)) + scope)
            resource = b"".join(inner)
            resources.append(b"\x0a" + _length(len(resource)) + resource)
        self.prefixed = b"".join(resources)


class _Traces:
    """The accepted spans grouped by trace: a stable sort of the trace ID column keeps each
    trace's spans in request order. A group is a run of one trace's spans in one scope; an entry
    is one trace's share of one resource (a ``ResourceSpans`` of its fragment)."""

    def __init__(self, request: _Request, ids: list[bytes], rows: list[list]) -> None:
        self.request = request
        n = len(ids)
        self.order = order = sorted(range(n), key=ids.__getitem__)
        pick = _picker(order)
        self.ids = ids = pick(ids)
        (self.payloads, self.scope_of, self.parents, self.states, self.starts, self.ends, self.codes,
         flags) = map(pick, rows)
        self.sampled = list(map(and_, flags, repeat(1)))
        tags = list(_each(_SPAN_TAGS, _span_tag, list(map(len, self.payloads))))
        self.spans = _interleave(tags, self.payloads)  # tag and length, span, tag and length, ...
        self.ends_at = list(accumulate(map(add, map(len, tags), map(len, self.payloads)), initial=0))
        changes = list(map(ne, islice(ids, 1, None), ids))
        self.trace_cuts = [0, *compress(count(1), changes), n]
        scope_changes = map(ne, islice(self.scope_of, 1, None), self.scope_of)
        self.group_cuts = [0, *compress(count(1), map(or_, changes, scope_changes)), n]
        trace_starts = set(self.trace_cuts)
        self.trace_groups = list(compress(count(), map(trace_starts.__contains__, self.group_cuts)))

    def fragments(self) -> dict[bytes, Fragment]:
        """Each trace's fragment, in the order of the traces' first spans in the request."""
        cuts = self.trace_cuts
        starts, ends = cuts[:-1], cuts[1:]
        pieces, sizes = self._pieces()
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

    def _pieces(self) -> tuple[list[list[bytes]], list[int]]:
        """Each trace's pieces and size; at once for all traces when each entry holds one group
        and every resource has a head (as SDKs send requests), entry by entry otherwise."""
        request = self.request
        groups = self.group_cuts[:-1]
        self.group_scope = _picker(groups)(self.scope_of)
        self.group_resource = resources = _picker(self.group_scope)(request.scope_resource)
        trace_first = map(set(self.trace_cuts).__contains__, islice(groups, 1, None))
        if all(request.heads) and not any(map(gt, map(eq, islice(resources, 1, None), resources), trace_first)):
            return self._pieces_of_single_group_entries()
        pieces, sizes = zip(*map(self._pieces_of_trace, range(len(self.trace_groups) - 1)))
        return list(pieces), list(sizes)

    def _pieces_of_single_group_entries(self) -> tuple[list[list[bytes]], list[int]]:
        request, cuts = self.request, self.group_cuts
        starts, ends = cuts[:-1], cuts[1:]
        heads = _picker(self.group_resource)(request.heads)
        scope_heads = _picker(self.group_scope)(request.scope_heads)
        scope_lengths = list(map(add, map(len, scope_heads), map(sub, _picker(ends)(self.ends_at), _picker(starts)(self.ends_at))))
        scope_varints = list(_each(_LENGTHS, varint, scope_lengths))
        entry_lengths = list(map(add, map(add, map(len, heads), map(len, scope_varints)), map(add, scope_lengths, repeat(1))))
        entry_tags = list(map(add, repeat(b"\x0a"), _each(_LENGTHS, varint, entry_lengths)))
        scope_tags = map(add, map(add, repeat(b"\x12"), scope_varints), scope_heads)
        following = [*entry_tags[1:], b""]  # the next entry's tag, if it is this trace's
        for last in islice(self.trace_groups, 1, None):
            following[last - 1] = b""
        spans = map(self.spans.__getitem__, map(slice, map(mul, starts, repeat(2)), map(mul, ends, repeat(2))))
        own = map(b"".join, map(chain, zip(scope_tags), spans, zip(following)))
        flat = _interleave(heads, list(own))  # head, what follows it up to the next head, ...
        firsts, lasts = self.trace_groups[:-1], self.trace_groups[1:]
        pieces = list(map(add, map(list, zip(_picker(firsts)(entry_tags))),
                          map(flat.__getitem__, map(slice, map(mul, firsts, repeat(2)), map(mul, lasts, repeat(2))))))
        entry_sizes = list(map(add, entry_lengths, map(len, entry_tags)))
        return pieces, list(map(sum, map(entry_sizes.__getitem__, map(slice, firsts, lasts))))

    def _pieces_of_trace(self, k: int) -> tuple[list[bytes], int]:
        """One trace's pieces and size, entry by entry."""
        request, cuts = self.request, self.group_cuts
        pieces: list[bytes] = []
        own: list[bytes] = []  # bytes since the last shared head
        size = 0
        g, last = self.trace_groups[k], self.trace_groups[k + 1]
        while g < last:
            resource = self.group_resource[g]
            scopes: list[bytes] = []
            while g < last and self.group_resource[g] == resource:
                scope = [request.scope_heads[self.group_scope[g]], *self.spans[2 * cuts[g] : 2 * cuts[g + 1]]]
                scopes += (b"\x12", _length(sum(map(len, scope))), *scope)
                g += 1
            head = request.heads[resource]
            length = len(head) + sum(map(len, scopes))
            own += (b"\x0a", _length(length))
            size += 1 + len(own[-1]) + length
            if head:
                pieces += (b"".join(own), head)
                own = []
            own += scopes
        pieces.append(b"".join(own))
        return pieces, size


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
