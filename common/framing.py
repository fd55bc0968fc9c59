"""Protobuf's wire framing, written by hand where bytes are cut and joined without a parse:
varints and length-delimited fields."""

from __future__ import annotations

_TABLE = 16384  # every length a span usually has: one or two bytes


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


LENGTHS: list[bytes] = [varint(n) for n in range(_TABLE)]
"""``varint(n)`` for every ``n`` below 16,384, looked up rather than computed."""


def length(n: int) -> bytes:
    """A length as a varint, from the table when it is short (as usual)."""
    return LENGTHS[n] if n < _TABLE else varint(n)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, varint length, payload."""
    return tag + length(len(payload)) + payload
