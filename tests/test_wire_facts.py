"""Facts records merge the same in Python, in C and in a Redis script (a real Valkey server)."""

from __future__ import annotations

import random
from importlib import resources

import pytest
import redis

from tailsampler.collector import wire_facts, wire_py
from tests.wire_differential import c_core

_MAX_U64 = (1 << 64) - 1


def _record(rng: random.Random) -> bytes:
    edge = rng.random() < 0.3
    size = rng.choice([_MAX_U64 - rng.randrange(1 << 40), (1 << 32) - 1]) if edge else rng.randrange(1 << 40)
    start = rng.choice([0, _MAX_U64, (1 << 61) + rng.randrange(1 << 32)])
    end = rng.choice([0, _MAX_U64, start + rng.randrange(1 << 33) if start < _MAX_U64 >> 1 else start])
    spans = (1 << 32) - 1 - rng.randrange(4) if edge else rng.randrange(1, 5000)
    return wire_facts.pack(rng.randrange(128), spans, size, start, end)


def test_merging_is_or_sum_min_max() -> None:
    a = wire_facts.pack(wire_facts.ROOT | 0x08, 3, 100, 50, 900)
    b = wire_facts.pack(wire_facts.SAMPLED | 0x20, 2, 60, 40, 700)
    merged = wire_facts.Facts.from_record(wire_facts.merge(a + b))
    assert merged == wire_facts.Facts(wire_facts.ROOT | wire_facts.SAMPLED | 0x28, 5, 160, 40, 900)
    assert merged.status_codes == {0, 2}


def test_c_and_python_merge_alike() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        records = b"".join(_record(rng) for _ in range(rng.randint(1, 5)))
        assert c_core().merge_facts(records) == wire_py.merge_facts(records)


@pytest.mark.parametrize("records", [b"", b"\x01" * 31, b"\x01" * 33, b"\x02" + bytes(31)])
def test_what_is_not_records_is_refused_by_both(records: bytes) -> None:
    for merge in (c_core().merge_facts, wire_py.merge_facts):
        with pytest.raises(ValueError):
            merge(records)


def test_a_redis_script_merges_as_python_does(clean_redis_url: str) -> None:
    """Timestamps near 2^61 and sums past 2^32 survive Lua's doubles."""
    lua = resources.files("tailsampler.collector").joinpath("wire_facts.lua").read_text()
    client = redis.Redis.from_url(clean_redis_url)
    merge = client.register_script(lua + "\nreturn merge_facts(ARGV[1], ARGV[2])")
    rng = random.Random(9)
    for _ in range(300):
        a, b = _record(rng), _record(rng)
        assert merge(args=[a, b]) == wire_facts.merge(a + b)
    with pytest.raises(redis.ResponseError, match="another version"):
        merge(args=[b"\x02" + bytes(31), a])
