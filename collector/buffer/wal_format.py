"""The write-ahead log's bytes: segment files of checksummed records.

A segment file is a header and records back to back, nothing else (integers little-endian):

    segment header, 24 bytes: magic b"TSWALSEG" | version u16 | flags u16 (1: the first segment an
                              agent opened) | sequence u64 | CRC-32 of the 20 bytes before
    record header, 16 bytes:  magic b"\\x89TSr" | CRC-32 u32 | payload length u32 | kind u8 | 3 zero bytes
    record payload

A record's CRC-32 (zlib's, the IEEE polynomial) covers its header from the length on and its
payload, so a torn or flipped length is caught like a flipped span byte, and the magic lets a
reader find the next record after a damaged one.

Every kind of record has the same payload, laid out in columns, so that the hundreds of fragments
of a request are encoded by C-level passes (``array``, ``bytes.join``, ``map``) instead of a Python
step per trace:

    head:      time f64 | entries E u32 | pieces R u32 | decisions D u32 | policy names N u16
    entries:   trace IDs 16·E | span counts u32·E | flags u8·E (1: the fragment holds a root span)
               | pieces per entry u32·E | facts lengths u32·E
               | received f64·E (carry records only: an append's entries were all received at ``time``)
               | first occurrence u32·R (of each piece: the index of the first piece that is the
                 same bytes object) | lengths u32·S of the S pieces that are their own first
                 occurrence | those pieces | facts
    decisions: trace IDs 16·D | keep u8·D | policy u16·D (index into the names, 0xFFFF: none)
               | sample rate f64·D (NaN: none) | name lengths u16·N | names, UTF-8
               | deliveries awaited u32·D (carry records only)

A fragment is the list of bytes pieces the split made, written as they are. A piece that several
fragments of one request share (the resource, hundreds of bytes of attributes, is one object for
all of them) is written once, so the log holds about the request's wire bytes rather than the
resource once per trace; finding them costs a few C-level passes over the pieces.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, count
from operator import attrgetter
from typing import Protocol

SEGMENT_MAGIC = b"TSWALSEG"
SEGMENT_VERSION = 1
_SEGMENT = struct.Struct("<8sHHQ")
_OPENED = 1
SEGMENT_HEADER = _SEGMENT.size + 4

RECORD_MAGIC = b"\x89TSr"
_RECORD = struct.Struct("<4sIIB3x")
RECORD_HEADER = _RECORD.size
_CRC_FROM = 8  # the checksum covers the record header from the length on, and the payload

APPEND = 1  # entries added to their traces; decisions made at ingest: kept ones await one more delivery, dropped ones are settled
CARRY = 2  # entries replace all that came before of their traces; decisions: their kept decisions
DECIDE = 3  # decisions: dropped traces are settled, kept ones await delivery
DELIVER = 4  # decisions: kept traces that every exporter has finished with
KINDS = frozenset((APPEND, CARRY, DECIDE, DELIVER))

_HEAD = struct.Struct("<dIIIH")
_NO_POLICY = 0xFFFF
_NAN = math.nan
_BIG_ENDIAN = sys.byteorder == "big"


class WalError(Exception):
    """The log cannot be used: the message names the file or directory and what is wrong with it."""


class WalFull(Exception):
    """Appending would take the log past ``max_bytes`` (or the disk is full); the buffer applies
    its overflow behaviour. Nothing of the refused request was written."""


class DecisionValue(Protocol):
    """What the log keeps of a decision: kept or dropped, the deciding policy, the sample rate."""

    @property
    def keep(self) -> bool: ...

    @property
    def policy(self) -> str | None: ...

    @property
    def sample_rate(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    keep: bool
    policy: str | None
    sample_rate: float | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One fragment as the log holds it: the trace's share of one request."""

    trace_id: bytes
    received: float  # wall-clock seconds
    span_count: int
    has_root: bool
    facts: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    time: float
    entries: list[Entry]
    decisions: list[tuple[bytes, LoggedDecision]]
    awaiting: list[int]  # a carry record's kept traces: the deliveries each still awaits


_KEEP = attrgetter("keep")
_POLICY = attrgetter("policy")
_RATE = attrgetter("sample_rate")


def _column(typecode: str, values: Iterable[float] | Iterable[int]) -> array:
    """An array of ``values`` in little-endian order (built from a list: from an iterator, array
    grows one item at a time, several times slower)."""
    column = array(typecode, values if isinstance(values, list) else list(values))
    if _BIG_ENDIAN:
        column.byteswap()
    return column


def encode_record(
    kind: int,
    time: float,
    trace_ids: Sequence[bytes],
    span_counts: Iterable[int],
    roots: Iterable[bool],
    pieces: Sequence[Sequence[bytes]],
    facts: Sequence[bytes] | None,
    received: Sequence[float] | None,
    decisions: Mapping[bytes, DecisionValue] | None,
    awaiting: Sequence[int] = (),
) -> bytearray:
    """One record, header included, ready to write. ``pieces`` holds each entry's pieces;
    ``facts`` None means every entry's facts are empty; ``received`` None means ``time``;
    ``awaiting`` (carry records) the deliveries each decision's trace awaits."""
    entries = len(trace_ids)
    flat = list(chain.from_iterable(pieces))
    seen: dict[int, int] = {}  # the pieces are alive throughout, so their ids stay unique
    firsts = list(map(seen.setdefault, map(id, flat), count()))
    own = list(map(flat.__getitem__, seen.values()))
    decided, names = _decision_columns(decisions) if decisions else ([], 0)
    parts: list[bytes | bytearray | array] = [
        bytes(RECORD_HEADER),  # packed below, once the length and checksum are known
        _HEAD.pack(time, entries, len(flat), len(decisions or ()), names),
        b"".join(trace_ids),
        _column("I", span_counts),
        bytes(roots),
        _column("I", map(len, pieces)),
        _column("I", map(len, facts)) if facts is not None else bytes(4 * entries),
    ]
    if kind == CARRY:
        parts.append(_column("d", received if received is not None else [time] * entries))
    parts += (_column("I", firsts), _column("I", map(len, own)), *own, *(facts or ()), *decided)
    if kind == CARRY and decisions:
        parts.append(_column("I", awaiting))
    record = bytearray().join(parts)
    _RECORD.pack_into(record, 0, RECORD_MAGIC, 0, len(record) - RECORD_HEADER, kind)
    struct.pack_into("<I", record, 4, zlib.crc32(memoryview(record)[_CRC_FROM:]))
    return record


def _decision_columns(decisions: Mapping[bytes, DecisionValue]) -> tuple[list[bytes | array], int]:
    """The decisions' columns and how many policy names they hold."""
    values = list(decisions.values())
    policies = list(map(_POLICY, values))
    table = [name for name in dict.fromkeys(policies) if name is not None]
    index: dict[str | None, int] = dict(zip(table, count()))
    index[None] = _NO_POLICY
    encoded = [name.encode() for name in table]
    columns = [
        b"".join(decisions),
        bytes(map(_KEEP, values)),
        _column("H", map(index.__getitem__, policies)),
        _column("d", [_NAN if rate is None else rate for rate in map(_RATE, values)]),
        _column("H", map(len, encoded)),
        *encoded,
    ]
    return columns, len(table)


class _Reader:
    """Columns read from a payload in order; any inconsistency raises ValueError."""

    def __init__(self, payload: memoryview) -> None:
        self.payload = payload
        self.pos = 0

    def take(self, size: int) -> memoryview:
        end = self.pos + size
        if size < 0 or end > len(self.payload):
            raise ValueError("payload shorter than its columns")
        view = self.payload[self.pos : end]
        self.pos = end
        return view

    def column(self, typecode: str, items: int) -> array:
        column = array(typecode)
        column.frombytes(self.take(items * column.itemsize))
        if _BIG_ENDIAN:
            column.byteswap()
        return column

    def ids(self, items: int) -> list[bytes]:
        raw = bytes(self.take(16 * items))
        return [raw[i : i + 16] for i in range(0, len(raw), 16)]

    def slices(self, lengths: array) -> list[memoryview]:
        block = self.take(sum(lengths))
        return [block[a:b] for a, b in zip(accumulate(lengths, initial=0), accumulate(lengths))]


def decode_payload(kind: int, payload: memoryview) -> Record:
    """The record a payload (already checked against its CRC) holds; ValueError if malformed."""
    try:
        return _decode(kind, payload)
    except (IndexError, struct.error) as exc:
        raise ValueError(str(exc)) from None


def _decode(kind: int, payload: memoryview) -> Record:
    reader = _Reader(payload)
    time, entries, references, decided, names = _HEAD.unpack(reader.take(_HEAD.size))
    trace_ids = reader.ids(entries)
    span_counts = reader.column("I", entries)
    flags = bytes(reader.take(entries))
    piece_counts = reader.column("I", entries)
    facts_lengths = reader.column("I", entries)
    received = reader.column("d", entries) if kind == CARRY else [time] * entries
    firsts = reader.column("I", references)
    own = reader.slices(reader.column("I", sum(1 for i, first in enumerate(firsts) if first == i)))
    facts = reader.slices(facts_lengths)
    if sum(piece_counts) != references:
        raise ValueError("piece counts do not add up")
    pieces: list[memoryview] = []
    stored = iter(own)
    for i, first in enumerate(firsts):
        if first > i:
            raise ValueError("a piece refers forward")
        pieces.append(next(stored) if first == i else pieces[first])
    decoded: list[Entry] = []
    start = 0
    for i, trace_id in enumerate(trace_ids):
        end = start + piece_counts[i]
        data = b"".join(pieces[start:end])
        decoded.append(Entry(trace_id, received[i], span_counts[i], bool(flags[i] & 1), bytes(facts[i]), data))
        start = end
    decisions: list[tuple[bytes, LoggedDecision]] = []
    if decided:
        ids = reader.ids(decided)
        keeps = bytes(reader.take(decided))
        policy_index = reader.column("H", decided)
        rates = reader.column("d", decided)
        table = [bytes(name).decode() for name in reader.slices(reader.column("H", names))]
        for trace_id, keep, policy, rate in zip(ids, keeps, policy_index, rates):
            name = None if policy == _NO_POLICY else table[policy]
            decisions.append((trace_id, LoggedDecision(bool(keep), name, None if math.isnan(rate) else rate)))
    awaiting = list(reader.column("I", decided)) if kind == CARRY and decided else []
    if reader.pos != len(payload):
        raise ValueError("payload longer than its columns")
    return Record(kind, time, decoded, decisions, awaiting)


def record_at(buffer: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """(kind, end) of the intact record at ``pos``, or None when there is none (torn, damaged)."""
    if len(buffer) - pos < RECORD_HEADER:
        return None
    magic, crc, length, kind = _RECORD.unpack_from(buffer, pos)
    end = pos + RECORD_HEADER + length
    if magic != RECORD_MAGIC or kind not in KINDS or end > len(buffer):
        return None
    if zlib.crc32(memoryview(buffer)[pos + _CRC_FROM : end]) != crc:
        return None
    return kind, end


@dataclass(slots=True)
class Scan:
    """The intact records of a segment, what was skipped, and where its valid bytes end."""

    records: list[tuple[int, int, int]]  # kind, offset, end
    corrupt: int  # damaged stretches skipped between intact records
    valid_end: int  # after the last intact record: what follows is a torn or damaged tail


def scan(buffer: bytes) -> Scan:
    """Walk a segment's records after its header; a damaged record is skipped up to the next
    intact one, and a damaged stretch with no intact record after it is the tail to cut off."""
    records: list[tuple[int, int, int]] = []
    corrupt = 0
    pos = valid_end = SEGMENT_HEADER
    while pos < len(buffer):
        found = record_at(buffer, pos)
        if found is None:
            nxt = buffer.find(RECORD_MAGIC, pos + 1)
            while nxt != -1 and record_at(buffer, nxt) is None:
                nxt = buffer.find(RECORD_MAGIC, nxt + 1)
            if nxt == -1:
                break
            corrupt += 1
            pos = nxt
            continue
        kind, end = found
        records.append((kind, pos, end))
        pos = valid_end = end
    return Scan(records, corrupt, valid_end)


def segment_header(sequence: int, opened: bool) -> bytes:
    """``opened``: the first segment of an agent that opened the log (replays restart there)."""
    head = _SEGMENT.pack(SEGMENT_MAGIC, SEGMENT_VERSION, _OPENED if opened else 0, sequence)
    return head + struct.pack("<I", zlib.crc32(head))


def read_segment_header(buffer: bytes) -> tuple[int, bool]:
    """A segment header's sequence number and opened flag; ValueError saying what is wrong."""
    if len(buffer) < SEGMENT_HEADER:
        raise ValueError(f"shorter than a segment header ({len(buffer)} of {SEGMENT_HEADER} bytes)")
    magic, version, flags, sequence = _SEGMENT.unpack_from(buffer)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a tailsampler write-ahead log segment (wrong magic)")
    (crc,) = struct.unpack_from("<I", buffer, _SEGMENT.size)
    if zlib.crc32(buffer[: _SEGMENT.size]) != crc:
        raise ValueError("segment header checksum mismatch")
    if version != SEGMENT_VERSION:
        raise ValueError(f"segment format version {version}, this tailsampler reads version {SEGMENT_VERSION}")
    return sequence, bool(flags & _OPENED)
