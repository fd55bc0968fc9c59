"""Facts records merge, and chains of records and fragments split, the same in Python and in C."""

from __future__ import annotations

import hashlib
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


def _digests(fragments) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(resource fields -> digest, digest -> resource fields) for the fragments' resources."""
    heads = {head for fragment in fragments for head in fragment.pieces[1::2]}
    digests = {head: hashlib.blake2b(head, digest_size=16).digest() for head in heads}
    return digests, {digest: head for head, digest in digests.items()}


def test_a_chain_stores_each_resource_by_digest_and_splits_back_into_the_fragments_and_merged_facts() -> None:
    for core in (c_core(), wire_py):
        fragments = [f for seed in range(3) for f in core.split(wire_bodies.real_request(60, seed))[0].values()][:7]
        digests, resources = _digests(fragments)
        assert digests  # the requests' resources have fields: there is something to refer to
        chained = core.chain(fragments, digests)
        assert chained == wire_py.chain(fragments, digests)
        assert not any(head in chained for head in digests)  # each resource is referred to, not stored
        data, facts = core.unchain(chained, resources)
        assert data == b"".join(b"".join(f.pieces) for f in fragments)
        assert facts == core.merge_facts(b"".join(f.facts for f in fragments))
        one = core.chain(fragments[:1], digests)
        assert core.unchain(one, resources) == (b"".join(fragments[0].pieces), fragments[0].facts)
        # the record's byte count is the stored body's: what a Redis script steps by
        assert trace_facts.byte_size(one[:40]) == len(one) - 40


def test_a_chain_without_a_resource_it_refers_to_names_the_digest() -> None:
    for core in (c_core(), wire_py):
        fragment = next(iter(core.split(wire_bodies.real_request(5))[0].values()))
        digests, resources = _digests([fragment])
        missing = next(iter(resources))
        with pytest.raises(KeyError) as raised:
            core.unchain(core.chain([fragment], digests), {d: h for d, h in resources.items() if d != missing})
        assert raised.value.args == (missing,)
        with pytest.raises(KeyError):
            core.chain([fragment], {})


@pytest.mark.parametrize("cut", [1, 39, 45])
def test_what_is_not_a_chain_is_refused_by_both(cut: int) -> None:
    fragment = next(iter(wire_py.split(wire_bodies.real_request(5))[0].values()))
    digests, resources = _digests([fragment])
    chained = wire_py.chain([fragment], digests)
    broken_count = chained[:40] + b"\xff\xff\xff\x00" + chained[44:]
    for value in (chained[:cut], b"", b"\x0a" + chained[1:], chained + b"\x01", broken_count):
        for core in (c_core(), wire_py):
            with pytest.raises(ValueError):
                core.unchain(value, resources)


def test_random_stored_bodies_are_refused_or_read_alike() -> None:
    """Hostile values (a Redis key written by something else) never crash the C core and meet
    the same answer in both."""
    rng = random.Random(9)
    fragment = next(iter(wire_py.split(wire_bodies.real_request(5))[0].values()))
    digests, resources = _digests([fragment])
    chained = bytearray(wire_py.chain([fragment], digests))
    for _ in range(3000):
        value = bytearray(chained)
        for _ in range(rng.randint(1, 4)):
            value[rng.randrange(len(value))] = rng.randrange(256)
        answers = []
        for core in (c_core(), wire_py):
            try:
                answers.append(core.unchain(bytes(value), resources))
            except (ValueError, KeyError) as exc:
                answers.append(type(exc))
        assert answers[0] == answers[1]


@pytest.mark.parametrize("shards", [1, 3, 16, 1 << 40])
def test_a_requests_appends_by_shard_are_the_same_in_both(shards: int) -> None:
    """One append per shard: its traces in the request's order, their hex IDs joined, the
    resources its fragments refer to (each once) and each fragment's chain."""
    for seed in range(4):
        body = wire_bodies.real_request(200, seed)
        answers = []
        for core in (c_core(), wire_py):
            fragments = core.split(body)[0]
            digests, _ = _digests(fragments.values())
            appends = core.shard_appends(fragments, shards, digests)
            for index, ids, ids_hex, heads, chains in appends:
                assert all(wire_py.shard_of(t, shards) == index for t in ids)
                assert ids_hex == b"".join(ids).hex().encode()
                group = [fragments[t] for t in ids]
                assert chains == [core.chain([f], digests) for f in group]
                assert heads == list(dict.fromkeys(h for f in group for h in f.pieces[1::2]))
            assert sorted(t for _, ids, *_ in appends for t in ids) == sorted(fragments)
            assert len({index for index, *_ in appends}) == len(appends)
            answers.append(appends)
        assert answers[0] == answers[1]


def test_what_cannot_be_appended_by_shard_is_refused_alike() -> None:
    for core in (c_core(), wire_py):
        fragments = core.split(wire_bodies.real_request(20))[0]
        digests, _ = _digests(fragments.values())
        tid, fragment = next(iter(fragments.items()))
        cases = [
            (({tid[:15]: fragment}, 2, digests), ValueError, "a trace ID must be 16 bytes"),
            (({tid: b"not a fragment"}, 2, digests), TypeError, "fragments must be Fragments"),
            ((fragments, 0, digests), ValueError, "shards must be at least 1"),
            ((fragments, 2, {}), KeyError, None),
        ]
        for args, error, message in cases:
            with pytest.raises(error, match=message):
                core.shard_appends(*args)
        assert core.shard_appends({}, 4, {}) == []
