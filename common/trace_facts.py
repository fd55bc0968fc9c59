"""Per-trace facts gathered by the wire walk, in a fixed 40-byte record that merges.

A trace arrives in several requests, so its facts are merged fragment by fragment: in the
memory buffer as fragments are appended, in the Redis buffer when a trace is claimed (the
append script stores each fragment's record in front of its bytes, unread). The policies read
the merged record through ``TraceView``. The record is little-endian:

======  ======  =============================================================
offset  type    field
======  ======  =============================================================
0       u8      format version, 1
1       u8      bits: 1 root seen, 2 a non-empty trace_state, 4 a W3C sampled
                flag (``flags & 1``), 8 UNSET, 16 OK, 32 ERROR, 64 another code
2       u16     0
4       u32     span count
8       u64     bytes: the length of the fragments the record describes
16      u64     earliest start_time_unix_nano (a span without one counts as 0)
24      u64     latest end_time_unix_nano (0 when no span has one)
32      u64     the ``probabilistic`` policy's hash of the trace ID with the default
                salt: FNV-1a 64 over ``default-hash-seed`` and the 16 ID bytes
======  ======  =============================================================

Merging is ``or`` of the bits, sums of counts and bytes, ``min`` of starts, ``max`` of ends, and
the hash of the first record (every record of a trace has the same): associative and
commutative, so records merge as they arrive or all at once, in any order, and a merged record
is a record.
"""

from __future__ import annotations

import struct
from functools import reduce

FACTS_VERSION = 1
FACTS_SIZE = 40
ROOT = 0x01
TRACE_STATE = 0x02
SAMPLED = 0x04
STATUS_BITS = {0: 0x08, 1: 0x10, 2: 0x20}  # UNSET, OK, ERROR
STATUS_OTHER = 0x40
RECORD = struct.Struct("<BBHIQQQQ")
_MAX_U32 = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1

STATUS_CODES: tuple[frozenset[int], ...] = tuple(
    frozenset(code for code, bit in STATUS_BITS.items() if bits & bit) for bits in range(256)
)
"""The OTLP status codes (0 UNSET, 1 OK, 2 ERROR) a record's bits say were seen, by the bits."""


def pack(bits: int, span_count: int, byte_size: int, start: int, end: int, trace_hash: int) -> bytes:
    return RECORD.pack(FACTS_VERSION, bits, 0, min(span_count, _MAX_U32), min(byte_size, _MAX_U64), start, end, trace_hash)


def _merge2(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return (a[0], a[1] | b[1], 0, a[3] + b[3], a[4] + b[4], min(a[5], b[5]), max(a[6], b[6]), a[7])


def merge(records: bytes) -> bytes:
    """One record for a concatenation of records; raises ``ValueError`` for a length that is not
    a whole number of records or a record of another version."""
    if not records or len(records) % FACTS_SIZE:
        raise ValueError(f"facts of {len(records)} bytes are not a whole number of {FACTS_SIZE}-byte records")
    fields = list(RECORD.iter_unpack(records))
    if any(f[0] != FACTS_VERSION for f in fields):
        raise ValueError(f"facts record of another version than {FACTS_VERSION}")
    _, bits, _, spans, size, start, end, trace_hash = reduce(_merge2, fields)
    return pack(bits, spans, size, start, end, trace_hash)


SPAN_COUNT = slice(4, 8)
BYTE_SIZE = slice(8, 16)


def span_count(record: bytes) -> int:
    return int.from_bytes(record[SPAN_COUNT], "little")


def byte_size(record: bytes) -> int:
    """The length of the fragments the record describes."""
    return int.from_bytes(record[BYTE_SIZE], "little")


def trace_hash(record: bytes) -> int:
    """The record's ``probabilistic`` hash of its trace ID (default salt)."""
    return int.from_bytes(record[32:40], "little")
