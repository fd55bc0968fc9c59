"""Per-trace facts gathered by the wire walk, in a fixed 32-byte record that merges.

A trace arrives in several requests, so its facts are merged fragment by fragment, in the
memory buffer (in Python) and in the Redis buffer (inside a Lua script, ``wire_facts.lua``).
The record is little-endian and made for both:

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
======  ======  =============================================================

Merging is ``or`` of the bits, sums of counts and bytes, ``min`` of starts and ``max`` of ends:
associative and commutative, so records can be merged as they arrive or all at claim time. Lua's
numbers are doubles, exact only to 2^53, and nanosecond timestamps are near 2^61, so every 64-bit
field is laid out as two u32 halves (low first) that a script compares and adds without loss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import reduce

FACTS_VERSION = 1
FACTS_SIZE = 32
ROOT = 0x01
TRACE_STATE = 0x02
SAMPLED = 0x04
STATUS_BITS = {0: 0x08, 1: 0x10, 2: 0x20}  # UNSET, OK, ERROR
STATUS_OTHER = 0x40
_STATUS_CODES = tuple(STATUS_BITS.items())
RECORD = struct.Struct("<BBHIQQQ")
_MAX_U32 = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1


def pack(bits: int, span_count: int, byte_size: int, start: int, end: int) -> bytes:
    return RECORD.pack(FACTS_VERSION, bits, 0, min(span_count, _MAX_U32), min(byte_size, _MAX_U64), start, end)


def _merge2(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return (a[0], a[1] | b[1], 0, a[3] + b[3], a[4] + b[4], min(a[5], b[5]), max(a[6], b[6]))


def merge(records: bytes) -> bytes:
    """One record for a concatenation of records (as an APPEND of each fragment's record leaves
    them); raises ``ValueError`` for a length that is not a whole number of records or a record
    of another version."""
    if not records or len(records) % FACTS_SIZE:
        raise ValueError(f"facts of {len(records)} bytes are not a whole number of {FACTS_SIZE}-byte records")
    fields = list(RECORD.iter_unpack(records))
    if any(f[0] != FACTS_VERSION for f in fields):
        raise ValueError(f"facts record of another version than {FACTS_VERSION}")
    version, bits, _, spans, size, start, end = reduce(_merge2, fields)
    return pack(bits, spans, size, start, end)


@dataclass(frozen=True, slots=True)
class Facts:
    """A record read for the policies: everything ``status_code``, ``latency``, ``span_count``,
    ``trace_flags``, ``rate_limiting`` and ``bytes_limiting`` decide on."""

    bits: int
    span_count: int
    byte_size: int
    start_time_unix_nano: int
    end_time_unix_nano: int

    @classmethod
    def from_record(cls, record: bytes) -> Facts:
        version, bits, _, spans, size, start, end = RECORD.unpack(record)
        if version != FACTS_VERSION:
            raise ValueError(f"facts record of version {version}, expected {FACTS_VERSION}")
        return cls(bits, spans, size, start, end)

    @property
    def has_root(self) -> bool:
        return bool(self.bits & ROOT)

    @property
    def has_trace_state(self) -> bool:
        return bool(self.bits & TRACE_STATE)

    @property
    def sampled(self) -> bool:
        """Some span carries the W3C sampled flag."""
        return bool(self.bits & SAMPLED)

    @property
    def status_codes(self) -> frozenset[int]:
        """The OTLP status codes seen (0 UNSET, 1 OK, 2 ERROR); a code outside OTLP's enum
        shows as ``other_status``."""
        return frozenset(code for code, bit in _STATUS_CODES if self.bits & bit)

    @property
    def other_status(self) -> bool:
        return bool(self.bits & STATUS_OTHER)

    @property
    def duration_ns(self) -> int:
        """Earliest start to latest end, as ``TraceView.duration_ns``."""
        return max(0, self.end_time_unix_nano - self.start_time_unix_nano)
