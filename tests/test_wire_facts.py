"""Facts records merge, and chains of records and fragments split, the same in Python and in C."""

from __future__ import annotations

import random
import pytest

from tailsampler.collector import wire_py
from tailsampler.common import trace_facts
from tests import wire_bodies
from tests.wire_differential import c_core

_MAX_U64 = (1 << 64) - 1


def _record(rng: random.Random) -> bytes:
    edge = rng.random() < 0.3
    size = rng.choice([_MAX_U64 - rng.randrange(1 << 40), (1 << 32) - 1]) if edge else rng.randrange(1 << 40)
    start = rng.choice([0, _MAX_U64, (1 << 61) + rng.randrange(1 << 32)])
    end = rng.choice([0, _MAX_U64, start + rng.randrange(1 << 33) if start < _MAX_U64 >> 1 else start])
    spans = (1 << 32) - 1 - rng.randrange(4) if edge else rng.randrange(1, 5000)
    return trace_facts.pack(rng.randrange(128), spans, size, start, end, rng.randrange(1 << 64))


def test_merging_is_or_sum_min_max() -> None:
    a = trace_facts.pack(trace_facts.ROOT | 0x08, 3, 100, 50, 900, 77)
    b = trace_facts.pack(trace_facts.SAMPLED | 0x20, 2, 60, 40, 700, 77)
    merged = trace_facts.merge(a + b)
    assert merged == trace_facts.pack(trace_facts.ROOT | trace_facts.SAMPLED | 0x28, 5, 160, 40, 900, 77)
    assert trace_facts.STATUS_CODES[merged[1]] == {0, 2} and trace_facts.trace_hash(merged) == 77


def test_c_and_python_merge_alike() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        records = b"".join(_record(rng) for _ in range(rng.randint(1, 5)))
        assert c_core().merge_facts(records) == wire_py.merge_facts(records)


@pytest.mark.parametrize("records", [b"", b"\x01" * 39, b"\x01" * 41, b"\x02" + bytes(39)])
def test_what_is_not_records_is_refused_by_both(records: bytes) -> None:
    for merge in (c_core().merge_facts, wire_py.merge_facts):
        with pytest.raises(ValueError):
            merge(records)


def test_a_chain_of_fragments_splits_back_into_their_bytes_and_merged_facts() -> None:
    for core in (c_core(), wire_py):
        fragments = [f for seed in range(3) for f in core.split(wire_bodies.real_request(60, seed))[0].values()][:7]
        data, facts = core.unchain(core.chain(fragments))
        assert data == b"".join(b"".join(f.pieces) for f in fragments)
        assert facts == core.merge_facts(b"".join(f.facts for f in fragments))
        assert core.unchain(core.chain(fragments[:1])) == (b"".join(fragments[0].pieces), fragments[0].facts)


@pytest.mark.parametrize("cut", [1, 39, 45])
def test_what_is_not_a_chain_is_refused_by_both(cut: int) -> None:
    fragment = next(iter(wire_py.split(wire_bodies.real_request(5))[0].values()))
    chained = wire_py.chain([fragment])
    for value in (chained[:cut], b"", b"\x0a" + chained[1:], chained + b"\x01"):
        for core in (c_core(), wire_py):
            with pytest.raises(ValueError):
                core.unchain(value)
