"""The C and the pure-Python wire cores agree exactly, fragments, facts and errors, on every input:
the split tests' layouts, real requests, the receiver tests' bad bodies, hostile and truncated
ones, and a fuzzer's mutations of the seed corpus (``tests/fuzz/corpus``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailsampler.common.framing import varint
from tests import wire_bodies
from tests.otlp_layouts import random_body
from tests.wire_differential import assert_cores_agree

CORPUS = sorted((Path(__file__).parent / "fuzz" / "corpus").iterdir())
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_seed_corpus_is_there() -> None:
    assert len(CORPUS) >= 10, "tests/fuzz/corpus is missing: python -m tests.fuzz.seed_corpus writes it"


@pytest.mark.parametrize("seed", range(300))
def test_random_layouts(seed: int) -> None:
    assert assert_cores_agree(random_body(random.Random(seed)))[0] == "split"


@pytest.mark.parametrize("seed", range(4))
def test_real_requests(seed: int) -> None:
    assert assert_cores_agree(wire_bodies.real_request(500, seed))[0] == "split"


@pytest.mark.parametrize("index", range(len(wire_bodies.receiver_bad_bodies())))
def test_the_receiver_tests_bad_bodies(index: int) -> None:
    assert_cores_agree(wire_bodies.receiver_bad_bodies()[index])


@pytest.mark.parametrize(
    "make",
    [wire_bodies.trace_id_twice, wire_bodies.span_id_twice_beside_none, wire_bodies.parent_twice_beside_root,
     wire_bodies.last_occurrences, wire_bodies.known_fields_of_other_wire_types],
)
def test_last_occurrences(make: object) -> None:
    assert assert_cores_agree(make())[0] == "split"  # type: ignore[operator]


@pytest.mark.parametrize("level", list(wire_bodies.LEVEL_DEPTH))
@pytest.mark.parametrize("extra", [0, 1, 50])
def test_deep_nesting(level: str, extra: int) -> None:
    result = assert_cores_agree(wire_bodies.nested_groups(100 - wire_bodies.LEVEL_DEPTH[level] + extra, level))
    assert result[0] == ("split" if extra == 0 else "refused")


def test_every_truncation() -> None:
    body = wire_bodies.real_request(30)
    for end in range(len(body)):
        assert_cores_agree(body[:end])


@pytest.mark.parametrize(
    "body",
    [
        b"", b"\x0a\x00", b"\x0a\x02\x12\x00", b"\x0a\x04\x12\x02\x12\x00",  # empty request, resource, scope, span
        b"\x0a\xff\xff\xff\xff\x07", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # lengths far past the end
        b"\x0a" + b"\xff" * 10 + b"\x01",  # a length longer than ten bytes
        b"\x0b" * 5000, b"\x0b" * 101 + b"\x0c" * 101,  # groups opened and never closed; too deep
        b"\x0a\x03\x0b\x0c\x0c", b"\x0a\x02\x13\x0c",  # end-group tags that close nothing or another group
        b"\x03\x04", b"\x0b\x03\x04\x0c", b"\x0b\x00\x01\x0c",  # field number 0: refused, but allowed in a group
        bytes(range(256)), b"\xff" * 64,
    ],
)
def test_hostile_bodies(body: bytes) -> None:
    assert_cores_agree(body)


def test_a_body_over_the_limit() -> None:
    assert assert_cores_agree(b"\x0a\x00" * ((32 << 20) + 1))[0] == "refused"


def test_random_mutations_of_the_corpus() -> None:
    rng = random.Random(12)
    bodies = [path.read_bytes() for path in CORPUS]
    for _ in range(3000):
        assert_cores_agree(wire_bodies.random_mutation(rng.choice(bodies), rng))


_EDIT = st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255), st.integers(1, 64))


@FUZZ
@given(st.sampled_from(CORPUS), st.lists(_EDIT, min_size=1, max_size=6))
def test_fuzzed_mutations_of_the_corpus(path: Path, edits: list[tuple[int, int, int, int]]) -> None:
    data = bytearray(path.read_bytes())
    for kind, at, value, size in edits:
        at %= len(data) + 1
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = value
        elif kind == 1:
            data[at:at] = bytes([value]) * (size % 4 + 1)
        elif kind == 2:
            del data[at : at + size]
        elif kind == 3:
            data[at:at] = data[at : at + size]
        else:
            del data[at:]
    assert_cores_agree(bytes(data))


_NUMBERS = st.sampled_from([0, 1, 2, 3, 4, 7, 8, 11, 15, 16, 100, (1 << 29) - 1])
_WIRE = st.integers(0, 7)


def _field(number: int, wire: int, value: bytes) -> bytes:
    tag = varint(number << 3 | wire)
    if wire == 2:
        return tag + varint(len(value)) + value
    if wire == 3:
        return tag + value + varint(number << 3 | 4)
    if wire == 0:
        return tag + (value[:10] or b"\x00")
    return tag + value[: 8 if wire == 1 else 4]


_MESSAGES = st.recursive(
    st.binary(max_size=24),
    lambda inner: st.lists(st.builds(_field, _NUMBERS, _WIRE, inner), max_size=6).map(b"".join),
    max_leaves=40,
)


@FUZZ
@given(_MESSAGES)
def test_fuzzed_field_soups(body: bytes) -> None:
    """Messages of any field numbers and wire types, nested: the framing's corner cases."""
    assert_cores_agree(body)


@pytest.mark.parametrize("seed", range(40))
def test_the_pure_cores_two_splits_agree(seed: int) -> None:
    """A request as encoders write it takes the pure core's split through its ID columns; any
    layout can take the exact split: both give the same fragments and facts."""
    from tailsampler.collector import wire_py

    body = random_body(random.Random(seed)) if seed % 2 else wire_bodies.real_request(200, seed)
    assert wire_py._located(body).canonical or seed % 2
    fast, exact = wire_py.split(body), wire_py.split_exactly(body)
    assert [(t, f.pieces, f.facts) for t, f in fast[0].items()] == [(t, f.pieces, f.facts) for t, f in exact[0].items()]
    assert fast[1:] == exact[1:]
