"""The pure-Python wire core: the reference twin of the C walk (``_wire.c``), same interface.

Every span passes through here when the extension is not built, so no span costs an interpreter
step; the per-span work is left to upb and to C passes over columns (``map``, ``compress``,
slices), and Python runs once per trace. For a request as encoders write them (each field the walk
reads once, none at its default, the shortest varints: *canonical*):

1. A parse into ``Plain`` types, as OTLP declares the path to the spans and the span fields the
   walk reads, checks the framing and that the request is canonical (its serialization is as
   long as the body).
2. A parse into ``Located`` types takes each span, each resource and scope field and each schema
   URL as bytes: each span's bytes and where it sits.
3. A parse into ``Id`` types, which declare ``resource_spans``, ``scope_spans`` and ``spans``
   singular and the span fields repeated, merges every span into one message of columns: the
   trace and span IDs, one per span.
4. A stable sort of the trace ID column groups each trace's spans in request order, and each
   trace's fragment is cut from the spans' bytes and wrapped in its scopes and resources.
5. One parse of every fragment's scopes, each resource's ended by a span with an empty parent and
   each trace's by a span with every fact field at its default, merges all the spans into
   columns in which those ends cut each trace's values (and each resource's parents): each
   trace's facts.

Any other request goes through the exact split: each span's bytes are prefixed with every fact
field at its default (``_DEFAULTS``) and the spans parsed as ``Checked`` types whose fact fields
track presence (so protobuf's rules, the last occurrence of a singular field winning, give each
span exactly one value of each), serialized again and parsed into columns with one value per span.

The checks are those of ``wire_check`` (which also words the error): the declared types hold no
``string`` field, so UTF-8 is not checked, and no field that the walk does not read is declared a
message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial, reduce
import struct
import zlib
from itertools import compress, count, islice, repeat
from operator import add, and_, itemgetter, mul, ne, not_, or_, sub

from google.protobuf.message import DecodeError

from tailsampler.collector.wire_check import MAX_BODY, first_error
from tailsampler.collector.wire_errors import WireError
from tailsampler.common import trace_facts
from tailsampler.common.framing import LENGTHS, field, length
from tailsampler.common.proto_types import FIELD, FieldSpec, declare

CORE = "python"
_B, _V, _F64, _F32, _I32, _M = (
    FIELD.TYPE_BYTES, FIELD.TYPE_UINT64, FIELD.TYPE_FIXED64, FIELD.TYPE_FIXED32, FIELD.TYPE_INT32, FIELD.TYPE_MESSAGE,
)
_ONE, _REPEATED, _PRESENT = "one", "repeated", "present"  # singular, repeated, singular tracking presence


def _declare(package: str, messages: Sequence[tuple[str, Sequence[tuple[int, str, int, str, str]]]]) -> dict[str, type]:
    """``declare`` for messages written as (name, [(number, field name, type, label, message type)])."""
    return declare(package, [
        (name, [FieldSpec(number, field_name, kind, label == _REPEATED, type_name, label == _PRESENT)
                for number, field_name, kind, label, type_name in fields])
        for name, fields in messages
    ])


# The span fields the walk does not read. The exact split's types, whose spans are messages of their
# own, declare them by wire type so that upb copies none aside; the types that merge every span
# into one message, and the canonical check, leave them unknown: upb keeps an unknown field as it
# came (and writes it back in one piece), which costs those parses less than setting each field.
_UNREAD = [(5, "name", _B), (6, "kind", _V), (9, "attributes", _B), (10, "dropped_attributes_count", _V),
           (11, "events", _B), (12, "dropped_events_count", _V), (13, "links", _B), (14, "dropped_links_count", _V)]


def _span(label: str, status: str, ids: str = "", unread: bool = False, numbers: tuple[int, int] = (_F64, _F32)) -> list[
    tuple[int, str, int, str, str]
]:
    """A span type: the fact fields ``label`` (the IDs ``ids`` when given), the times and flags of
    the types ``numbers``, and with ``unread`` the fields the walk does not read, singular."""
    return [
        (1, "trace_id", _B, ids or label, ""), (2, "span_id", _B, ids or label, ""), (3, "trace_state", _B, label, ""),
        (4, "parent_span_id", _B, label, ""), (7, "start_time_unix_nano", numbers[0], label, ""),
        (8, "end_time_unix_nano", numbers[0], label, ""), (15, "status", _M, _ONE, status),
        (16, "flags", numbers[1], label, ""),
        *[(number, name, kind, _ONE, "") for number, name, kind in _UNREAD if unread],
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
    ("PlainSpan", _span(_ONE, "PlainStatus")),
    *_envelopes("Plain", "PlainSpan", _REPEATED, _REPEATED),
    # a canonical request's trace and span ID columns, and any length-delimited fact number
    ("IdStatus", [(2, "message", _B, _ONE, ""), (3, "code", _B, _REPEATED, "")]),
    ("IdSpans", _span(_REPEATED, "IdStatus", numbers=(_B, _B))),
    *_envelopes("Id", "IdSpans", _ONE, ""),
    # the scopes of a canonical request's fragments as one ResourceSpans, every span merged into columns
    ("EntryStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _REPEATED, "")]),
    ("EntrySpans", _span(_REPEATED, "EntryStatus", ids=_ONE)),
    ("EntryScopeSpans", [(1, "scope", _B, _ONE, ""), (2, "spans", _M, _ONE, "EntrySpans"), (3, "schema_url", _B, _ONE, "")]),
    ("EntryResourceSpans", [
        (1, "resource", _B, _ONE, ""), (2, "scope_spans", _M, _ONE, "EntryScopeSpans"), (3, "schema_url", _B, _ONE, ""),
    ]),
    # the spans prefixed with the fact fields' defaults, each holding each one exactly once
    ("CheckedStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _PRESENT, "")]),
    ("CheckedSpan", _span(_PRESENT, "CheckedStatus", unread=True)),
    *_envelopes("Checked", "CheckedSpan", _REPEATED, ""),
    ("ColumnStatus", [(2, "message", _B, _ONE, ""), (3, "code", _I32, _REPEATED, "")]),
    ("ColumnSpans", _span(_REPEATED, "ColumnStatus", unread=True)),
    *_envelopes("Column", "ColumnSpans", _ONE, ""),
])
_Located, _Plain, _Ids, _Entries, _Checked, _Columns = (
    _TYPES[name] for name in ("LocatedRequest", "PlainRequest", "IdRequest", "EntryResourceSpans", "CheckedRequest", "ColumnRequest")
)

# trace_id, span_id, trace_state, parent_span_id empty; start, end 0; status {code: 0}; flags 0
_DEFAULTS = b"\x0a\x00\x12\x00\x1a\x00\x22\x00\x39" + bytes(8) + b"\x41" + bytes(8) + b"\x7a\x02\x18\x00\x85\x01" + bytes(4)
_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_TABLE = len(LENGTHS)
_SPAN_TAGS = [b"\x12" + v for v in LENGTHS]  # a span's tag and length in ScopeSpans, a scope's in ResourceSpans
_ENTRY_TAGS = [b"\x0a" + v for v in LENGTHS]  # a ResourceSpans' tag and length in TracesData
_PREFIXED = [b"\x12" + length(n + len(_DEFAULTS)) + _DEFAULTS for n in range(_TABLE)]
_CODE_BITS = trace_facts.STATUS_BITS
_UNSET = _CODE_BITS[0]
_TRACE_STATE, _SAMPLED, _OTHER = trace_facts.TRACE_STATE, trace_facts.SAMPLED, trace_facts.STATUS_OTHER
_RECORD = trace_facts.RECORD
# A scope holding one span that ends an entry's spans in the merged columns: its parent_span_id
# is empty, which no span of a canonical request's has; the trace's last entry ends with every
# fact field at its default (trace_state, status code, flags, start, end), ending the trace's
# values in each column too.
_ENTRY_END = field(b"\x12", field(b"\x12", b"\x22\x00"))
_TRACE_END = field(b"\x12", field(b"\x12", _DEFAULTS[4:]))
merge_facts = trace_facts.merge


def fnv1a_64(data: bytes, state: int = 0xCBF29CE484222325) -> int:
    """FNV-1a 64 of ``data`` continuing from ``state`` (the offset basis, or a salt's hash)."""
    for byte in data:
        state = ((state ^ byte) * _FNV_PRIME) & _MASK64
    return state


_DEFAULT_SALT = fnv1a_64(b"default-hash-seed")

# FNV-1a of many 16-byte IDs at once, one lane of a few big integers per ID. XOR with a byte adds
# d = (low ^ byte) - low to the state, where low is its low byte, so after 16 bytes the state is
# salt * P**16 + sum(d_k * P**(16 - k)) mod 2**64 (Horner's rule over the d_k), and the low bytes
# follow one another alone: low' = ((low ^ byte) * P) mod 256. Each d_k is kept positive in its
# lane as d_k + 256, and the sum of those 256s taken off once at the end.
_LANE = 14  # bytes per ID: a lane holds (a 64-bit state + 511) * P, below 2**112
_LANE_UNIT = b"\x01" + bytes(_LANE - 1)
_LANE_STATE = struct.Struct(f"<Q{_LANE - 8}x")
_HASH_BASE = (_DEFAULT_SALT * pow(_FNV_PRIME, 16, 1 << 64) - 256 * sum(pow(_FNV_PRIME, k, 1 << 64) for k in range(1, 17))) & _MASK64


def _default_salt_hashes(trace_ids: list[bytes]) -> Iterator[int]:
    """``fnv1a_64(trace_id, _DEFAULT_SALT)`` of each 16-byte ID, in 16 steps of big-integer
    operations over all the IDs rather than 16 interpreter steps per ID."""
    unit = int.from_bytes(_LANE_UNIT * len(trace_ids), "little")
    lows, states = 0xFF * unit, _MASK64 * unit
    joined, lane = b"".join(trace_ids), bytearray(_LANE * len(trace_ids))
    low, total = (_DEFAULT_SALT & 0xFF) * unit, 0
    for k in range(16):
        lane[::_LANE] = joined[k::16]
        xored = low ^ int.from_bytes(lane, "little")
        total = ((total + xored + 256 * unit - low) * _FNV_PRIME) & states
        low = (xored * (_FNV_PRIME & 0xFF)) & lows
    lanes = _LANE_STATE.iter_unpack(total.to_bytes(_LANE * len(trace_ids), "little"))
    return map(and_, map(add, map(itemgetter(0), lanes), repeat(_HASH_BASE)), repeat(_MASK64))


def _each(table: list[bytes], make: Callable[[int], bytes], lengths: Iterable[int]) -> list[bytes]:
    """``make`` of each length, from ``table`` when every length is within it (as usual)."""
    lengths = list(lengths)
    try:
        return list(map(table.__getitem__, lengths))
    except IndexError:
        return list(map(make, lengths))


def _span_tag(n: int) -> bytes:
    return b"\x12" + length(n)


def _entry_tag(n: int) -> bytes:
    return b"\x0a" + length(n)


def _prefixed(n: int) -> bytes:
    return b"\x12" + length(n + len(_DEFAULTS)) + _DEFAULTS


def _framed(tag: bytes, payloads: list[bytes]) -> bytes:
    """Each payload as a length-delimited field ``tag``, in a minimal encoding."""
    return b"".join([tag + length(len(p)) + p for p in payloads])


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
        return trace_facts.byte_size(self.facts)

    @property
    def span_count(self) -> int:
        return trace_facts.span_count(self.facts)

    @property
    def has_root(self) -> bool:
        return bool(self.facts[1] & trace_facts.ROOT)

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


Split = tuple[dict[bytes, Fragment], int, int, dict[bytes, int]]


def split(body: bytes) -> Split:
    """(fragments by trace ID, spans accepted, spans refused, root spans by resource head) of an
    export request body; a body the walk refuses raises ``WireError``.

    A request as encoders write them (each field the walk reads once, in its shortest form) is
    split through its ID columns and one parse of the fragments for the facts; any other goes
    through the parses that give each span exactly one value of each fact field
    (``split_exactly``)."""
    request = _located(body)
    if not request.payloads:
        return {}, 0, 0, {}
    if request.canonical:
        split = _split_canonical(body, request)
        if split is not None:
            return split
    return _split_exactly(request)


def split_exactly(body: bytes) -> Split:
    """``split`` through the parses that hold for any layout; the same result, more slowly."""
    request = _located(body)
    return _split_exactly(request) if request.payloads else ({}, 0, 0, {})


DIGEST_SIZE = 16
_COUNT = struct.Struct("<I")
_BYTE_SIZE = struct.Struct("<Q")


def chain(fragments: list[Fragment], digests: dict[bytes, bytes]) -> bytes:
    """Each fragment's record, then its stored body, for every fragment in turn: what a buffer
    that keeps a trace as one string appends, with each resource's fields stored elsewhere once
    and referred to by the digest ``digests`` maps them to. The body is a u32 count n, the lengths
    (u32) of the n pieces of the fragment's own bytes that come before a resource, the n digests,
    then its own bytes; the record's byte count is the body's length, so it says where the body
    ends (``unchain`` gives the fragment's own length back)."""
    out: list[bytes] = []
    for fragment in fragments:
        pieces = fragment.pieces
        if len(pieces) % 2 == 0:
            raise ValueError("a fragment's pieces must alternate its own bytes and resource fields")
        owns, heads = pieces[0::2], pieces[1::2]
        refs = [digests[head] for head in heads]
        if any(len(ref) != DIGEST_SIZE for ref in refs):
            raise ValueError(f"a resource digest must be {DIGEST_SIZE} bytes")
        body = struct.pack(f"<I{len(heads)}I", len(heads), *map(len, owns[:-1])) + b"".join(refs) + b"".join(owns)
        facts = fragment.facts
        out += (facts[:8], _BYTE_SIZE.pack(len(body)), facts[16:], body)
    return b"".join(out)


ShardAppend = tuple[int, list[bytes], bytes, list[bytes], list[bytes]]


def shard_of(trace_id: bytes, shards: int) -> int:
    """A trace's shard in a shared buffer: CRC-32 of its ID, the same in every agent, process
    and version (``shard_appends`` applies it to a request's traces)."""
    return zlib.crc32(trace_id) % shards


def shard_appends(fragments: dict[bytes, Fragment], shards: int, digests: dict[bytes, bytes]) -> list[ShardAppend]:
    """A request's fragments grouped into one append per shard, so that a shared buffer spends
    nothing per trace in the interpreter: for each shard its traces fall in (CRC-32 of the trace
    ID, modulo ``shards``), in the order of its first trace, (the shard, its trace IDs, their hex
    forms joined, the resources its fragments refer to, each once, in the order first referred
    to, and each fragment's ``chain``)."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    groups: dict[int, tuple[list[bytes], dict[bytes, None], list[bytes]]] = {}
    for trace_id, fragment in fragments.items():
        if not isinstance(trace_id, bytes) or len(trace_id) != 16:
            raise ValueError("a trace ID must be 16 bytes")
        if not isinstance(fragment, Fragment):
            raise TypeError(f"fragments must be Fragments, not {type(fragment).__name__}")
        ids, heads, chains = groups.setdefault(shard_of(trace_id, shards), ([], {}, []))
        chains.append(chain([fragment], digests))
        ids.append(trace_id)
        heads.update(dict.fromkeys(fragment.pieces[1::2]))
    return [(index, ids, b"".join(ids).hex().encode(), list(heads), chains) for index, (ids, heads, chains) in groups.items()]


def unchain(value: bytes, resources: dict[bytes, bytes]) -> tuple[bytes, bytes]:
    """A chain back into (the fragments' bytes joined, their merged facts record), each digest
    replaced by the resource fields ``resources`` maps it to; a digest it lacks raises
    ``KeyError`` with the digest, bytes that are not a chain ``ValueError``."""
    size = trace_facts.FACTS_SIZE
    at, records, data = 0, [], []
    while at < len(value):
        record = value[at : at + size]
        if len(record) < size or record[0] != trace_facts.FACTS_VERSION:
            raise ValueError(f"not a chain of facts records and fragments at byte {at}")
        n = trace_facts.byte_size(record)
        if n > len(value) - at - size:
            raise ValueError(f"a fragment of {n} bytes at byte {at} runs past the chain's end")
        body = value[at + size : at + size + n]
        count = _COUNT.unpack_from(body)[0] if n >= 4 else -1
        if count < 0 or count > (n - 4) // (4 + DIGEST_SIZE):
            raise ValueError(f"the fragment at byte {at} is not a stored fragment")
        lengths = struct.unpack_from(f"<{count}I", body, 4)
        refs = 4 + 4 * count
        own = refs + DIGEST_SIZE * count
        if own + sum(lengths) > n:
            raise ValueError(f"the fragment at byte {at} is not a stored fragment")
        pieces = []
        for i, length in enumerate(lengths):
            pieces += (body[own : own + length], resources[body[refs + DIGEST_SIZE * i : refs + DIGEST_SIZE * (i + 1)]])
            own += length
        pieces.append(body[own:])
        fragment = b"".join(pieces)
        records.append(record[:8] + _BYTE_SIZE.pack(len(fragment)) + record[16:])
        data.append(fragment)
        at += size + n
    if not records:
        raise ValueError("an empty chain")
    return b"".join(data), records[0] if len(records) == 1 else merge_facts(b"".join(records))


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


def _split_canonical(body: bytes, request: _Request) -> Split | None:
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
    if not ids:
        return {}, 0, refused, {}
    layout = _Layout(request, ids, payloads, scope_of)
    return (*layout.fragments(*_facts_of_fragments(layout)), refused, layout.roots)


def _split_exactly(request: _Request) -> Split:
    checked = _Checked.FromString(request.prefixed())
    ids, span_ids, parents, states, starts, ends, codes, flags = _columns(checked, len(request.payloads))
    payloads, scope_of = request.payloads, request.scope_of
    rows = [parents, states, starts, ends, codes, flags]
    refused = 0
    if not _all_valid(ids, span_ids):
        valid = list(map(_valid, ids, span_ids))
        refused = valid.count(False)
        ids, payloads, scope_of = (list(compress(column, valid)) for column in (ids, payloads, scope_of))
        rows = [list(compress(row, valid)) for row in rows]
    if not ids:
        return {}, 0, refused, {}
    layout = _Layout(request, ids, payloads, scope_of)
    return (*layout.fragments(*_facts_of_columns(layout, rows)), refused, layout.roots)


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


class _Request:
    """What the located parse says of a request: each resource's shared head (its resource and
    schema_url fields), each scope's head and resource, every span's bytes and scope; and whether
    the request is canonical (each field the walk reads at most once, none at its default, shortest
    varints)."""

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
            scope = b"".join(_interleave(_each(_PREFIXED, _prefixed, map(len, spans)), spans))
            resources[resource].append(b"\x12" + length(len(scope)) + scope)
        return b"".join(b"\x0a" + length(len(inner)) + inner for inner in map(b"".join, resources))


def _cuts(*columns: list) -> list[int]:
    """Where a run of equal rows (over ``columns``) starts, and the end."""
    changes = reduce(partial(map, or_), (map(ne, islice(column, 1, None), column) for column in columns))
    return [0, *compress(count(1), changes), len(columns[0])]


def _spans(column: list, cuts: list[int]) -> Iterator[list]:
    """``column`` cut at ``cuts``: one slice per run."""
    return map(column.__getitem__, map(slice, cuts, islice(cuts, 1, None)))


class _Layout:
    """The accepted spans of a request as fragments. A stable sort of the trace ID column puts
    each trace's spans together in request order, so its spans of one scope are adjacent and
    its scopes, and resources, follow in request order. Each trace's fragment is then one
    ResourceSpans *entry* per resource it has spans under (the resource's shared head and one
    ScopeSpans per scope, the scope's fields first), every entry's tag and length and scopes the
    fragment's own bytes, between the shared heads.

    Only what is done per trace is done in Python; what is done per span, scope or entry is one
    C pass over a column (``map``, ``compress``, slices)."""

    def __init__(self, request: _Request, ids: list[bytes], payloads: list[bytes], scope_of: list[int]) -> None:
        self.order = order = sorted(range(len(ids)), key=ids.__getitem__)
        pick = _picker(order)
        self.ids = ids = pick(ids)
        scope_of = pick(scope_of)
        payloads = pick(payloads)
        parts = _interleave(_each(_SPAN_TAGS, _span_tag, map(len, payloads)), payloads)
        # runs of one trace and one scope: a ScopeSpans each, its fields first
        groups = _cuts(ids, scope_of)
        starts = groups[:-1]
        by_group = _picker(starts)
        group_scope = by_group(scope_of)
        bodies = list(map(b"".join, map(parts.__getitem__, map(slice, map(mul, starts, repeat(2)), map(mul, groups[1:], repeat(2))))))
        by_scope = _picker(group_scope)
        scope_heads = by_scope(request.scope_heads)
        scopes = list(map(add, map(add, _each(_SPAN_TAGS, _span_tag, map(add, map(len, scope_heads), map(len, bodies))),
                                   scope_heads), bodies))
        # runs of groups of one trace and one resource: an entry each
        group_ids = by_group(ids)
        group_resource = by_scope(request.scope_resource)
        entries = _cuts(group_ids, group_resource)
        if len(entries) != len(groups):  # a trace with spans under several scopes of one resource
            scopes = list(map(b"".join, _spans(scopes, entries)))
        by_entry = _picker(entries[:-1])
        self.entry_spans = by_entry(starts) + [len(ids)]  # where each entry's spans start
        self.entry_heads = heads = _picker(by_entry(group_resource))(request.heads)
        inner = list(map(add, map(len, heads), map(len, scopes)))
        tags = _each(_ENTRY_TAGS, _entry_tag, inner)
        self.entry_sizes = list(map(add, map(len, tags), inner))
        self.entry_tags, self.entry_scopes = tags, scopes
        # traces: runs of entries of one trace
        self.traces = traces = _cuts(by_entry(group_ids))
        self.trace_spans = _picker(traces)(self.entry_spans)  # where each trace's spans start, and the end
        self.roots: dict[bytes, int] = {}

    def pieces(self) -> Iterable[list[bytes]]:
        """Each trace's pieces: its own bytes, a shared head, its own bytes, ..., its own bytes."""
        tags, heads, scopes, traces = self.entry_tags, self.entry_heads, self.entry_scopes, self.traces
        if not all(heads):
            return map(_pieces, _spans(tags, traces), _spans(heads, traces), _spans(scopes, traces))
        # each entry's own bytes before its head: its tag after the scopes of the trace's entry
        # before it; each trace's pieces are then its entries' (own, head) pairs and its last scopes
        befores = list(map(add, [b"", *scopes[:-1]], tags))
        for first in islice(traces, 1, len(traces) - 1):
            befores[first] = tags[first]
        pairs = _interleave(befores, heads)
        lasts = map(scopes.__getitem__, map(sub, islice(traces, 1, None), repeat(1)))
        doubled = list(map(mul, traces, repeat(2)))
        return map(add, map(pairs.__getitem__, map(slice, doubled, islice(doubled, 1, None))), map(list, zip(lasts)))

    def fragments(self, facts: Iterable[tuple[int, int, int]], entry_roots: list[int]) -> tuple[dict[bytes, Fragment], int]:
        """Each trace's fragment in the order of the traces' first spans in the request, and the
        spans accepted; ``facts`` are each trace's facts bits but the root's, earliest start
        and latest end, ``entry_roots`` each entry's root spans. Root spans are counted by the
        head of their entry's resource."""
        bits, starts, ends = map(list, zip(*facts))
        for head, found in compress(zip(self.entry_heads, entry_roots), entry_roots):
            self.roots[head] = self.roots.get(head, 0) + found
        traces, trace_spans = self.traces, self.trace_spans
        by_trace = _picker(trace_spans[:-1])
        trace_ids = by_trace(self.ids)
        rooted = map(mul, map(any, _spans(entry_roots, traces)), repeat(trace_facts.ROOT))
        records = map(
            _RECORD.pack, repeat(trace_facts.FACTS_VERSION), map(or_, bits, rooted), repeat(0),
            map(sub, islice(trace_spans, 1, None), trace_spans), map(sum, _spans(self.entry_sizes, traces)),
            starts, ends, _default_salt_hashes(trace_ids),
        )
        fragments = list(map(Fragment, self.pieces(), records))
        first_span = by_trace(self.order)  # a stable sort keeps each trace's first span first
        by_first = _picker(sorted(range(len(fragments)), key=first_span.__getitem__))
        return dict(zip(by_first(trace_ids), by_first(fragments))), trace_spans[-1]


def _pieces(tags: list[bytes], heads: list[bytes], scopes: list[bytes]) -> list[bytes]:
    """A trace's pieces from its entries when some resource has no fields (no head to share)."""
    pieces: list[bytes] = []
    own: list[bytes] = []
    for tag, head, entry_scopes in zip(tags, heads, scopes):
        own.append(tag)
        if head:
            pieces += (b"".join(own), head)
            own = []
        own.append(entry_scopes)
    pieces.append(b"".join(own))
    return pieces


def _facts_of_fragments(layout: _Layout) -> tuple[Iterator[tuple[int, int, int]], list[int]]:
    """(each trace's facts, each entry's root spans) from one parse of every entry's scopes, each
    entry ended by a span that ends its values in the merged columns (``_ENTRY_END``,
    ``_TRACE_END``): in a canonical request each fact field occurs at most once per span and never
    with its default, so the values between two ends are one trace's (or, for parent_span_id,
    one entry's), and they are fewer than its spans exactly when some span lacks the field."""
    traces, scopes = layout.traces, layout.entry_scopes
    ends = [_ENTRY_END] * len(scopes)
    for last in islice(traces, 1, None):
        ends[last - 1] = _TRACE_END
    spans = _Entries.FromString(b"".join(_interleave(scopes, ends))).scope_spans.spans  # type: ignore[attr-defined]
    parents = spans.parent_span_id[:]
    # entry i ends at the column's i-th default, after its parents and every earlier entry's
    # parents and end: the spans up to its end less that is the roots up to its end
    cut = compress(count(), map(not_, parents))
    rooted = list(map(sub, map(add, islice(layout.entry_spans, 1, None), count()), cut))
    entry_roots = list(map(sub, rooted, [0, *rooted[:-1]]))
    trace_spans = layout.trace_spans
    columns = [_trace_values(column[:], trace_spans) for column in
               (spans.trace_state, spans.status.code, spans.flags, spans.start_time_unix_nano, spans.end_time_unix_nano)]
    return map(_canonical_facts, *columns, map(sub, islice(trace_spans, 1, None), trace_spans)), entry_roots


def _trace_values(column: list, trace_spans: list[int]) -> Iterable[list]:
    """Each trace's values of a column whose traces each end with the field's default, where each
    trace's spans start in ``trace_spans``. A column of no value or one value per span (as
    usual) is cut where those say; any other where its defaults are."""
    traces = len(trace_spans) - 1
    if len(column) == traces:
        return repeat([], traces)
    if len(column) == trace_spans[-1] + traces:
        starts = list(map(add, trace_spans, count()))
        return map(column.__getitem__, map(slice, starts, map(sub, islice(starts, 1, None), repeat(1))))
    cut = list(compress(count(), map(not_, column)))
    return map(column.__getitem__, map(slice, [0, *map(add, cut[:-1], repeat(1))], cut))


def _canonical_facts(states: list[bytes], codes: list[int], flags: list[int], starts: list[int], ends: list[int],
                     count: int) -> tuple[int, int, int]:
    """(bits but the root's, earliest start, latest end) of a trace's values: none at its default."""
    bits = _TRACE_STATE if states else 0
    if len(codes) < count:
        bits |= _UNSET
    if codes:
        bits |= reduce(or_, map(_CODE_BITS.get, set(codes), repeat(_OTHER)))
    if flags and 1 in map(and_, flags, repeat(1)):
        bits |= _SAMPLED
    return bits, min(starts) if len(starts) == count else 0, max(ends) if ends else 0


def _facts_of_columns(layout: _Layout, rows: list[list]) -> tuple[Iterator[tuple[int, int, int]], list[int]]:
    """(each trace's facts, each entry's root spans) from columns with one value per span, in
    request order."""
    pick = _picker(layout.order)
    parents, states, starts, ends, codes, flags = map(pick, rows)
    entry_roots = list(map(list.count, _spans(parents, layout.entry_spans), repeat(b"")))
    by_trace = partial(_spans, cuts=layout.trace_spans)
    return map(_exact_facts, *map(by_trace, (states, starts, ends, codes, flags))), entry_roots


def _exact_facts(states: list[bytes], starts: list[int], ends: list[int], codes: list[int],
                 flags: list[int]) -> tuple[int, int, int]:
    bits = reduce(or_, map(_CODE_BITS.get, set(codes), repeat(trace_facts.STATUS_OTHER)))
    bits |= trace_facts.TRACE_STATE if any(states) else 0
    if 1 in map(and_, flags, repeat(1)):
        bits |= trace_facts.SAMPLED
    return bits, min(starts), max(ends)


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
