"""Each policy type through the real engine on real OTLP traces: a table per type."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tailsampler.policies import Decision
from tailsampler.policies.probabilistic import fnv1a_64, threshold

from .policy_traces import TRACE_ID, engine, resource_spans, span, view

S, N = Decision.SAMPLED, Decision.NOT_SAMPLED


def vote(policy: dict, trace) -> Decision:
    return engine([policy]).decide(trace).votes[policy["name"]]


def check(policy: dict, trace, expected: Decision) -> None:
    verdict = engine([policy]).decide(trace)
    assert verdict.votes[policy["name"]] is expected
    assert verdict.keep is (expected is S)
    assert verdict.policy == (policy["name"] if expected is S else None)


LATENCY = [
    ("at-threshold-keeps", {"threshold_ms": 100}, [span(start_ms=0, end_ms=100)], S),
    ("below-threshold", {"threshold_ms": 100}, [span(start_ms=0, end_ms=99)], N),
    # earliest start to latest end, gaps included (reference latency.go)
    ("earliest-start-to-latest-end", {"threshold_ms": 100}, [span(start_ms=0, end_ms=30), span(start_ms=80, end_ms=101)], S),
    ("upper-exclusive-lower", {"threshold_ms": 100, "upper_threshold_ms": 200}, [span(end_ms=100)], N),
    ("upper-inclusive", {"threshold_ms": 100, "upper_threshold_ms": 200}, [span(end_ms=200)], S),
    ("above-upper", {"threshold_ms": 100, "upper_threshold_ms": 200}, [span(end_ms=201)], N),
    ("sub-millisecond-truncated", {"threshold_ms": 1}, [span(start_ms=0, end_ms=0)], N),
    ("empty-trace", {"threshold_ms": 0}, [], N),
]


@pytest.mark.parametrize("cfg,spans,expected", [c[1:] for c in LATENCY], ids=[c[0] for c in LATENCY])
def test_latency(cfg, spans, expected):
    check({"name": "slow", "type": "latency", "latency": cfg}, view(*spans), expected)


STATUS = [
    ("error-present", ["ERROR"], [span(status=0), span(status=2)], S),
    ("error-absent", ["ERROR"], [span(status=0), span(status=1)], N),
    ("unset-listed", ["ERROR", "UNSET"], [span(status=0)], S),
    ("ok-listed", ["OK"], [span(status=1)], S),
    ("empty-trace", ["ERROR"], [], N),
]


@pytest.mark.parametrize("codes,spans,expected", [c[1:] for c in STATUS], ids=[c[0] for c in STATUS])
def test_status_code(codes, spans, expected):
    check({"name": "errors", "type": "status_code", "status_code": {"status_codes": codes}}, view(*spans), expected)


def test_always_sample_keeps_even_empty_traces():
    check({"name": "all", "type": "always_sample"}, view(span()), S)
    check({"name": "all", "type": "always_sample"}, view(), S)


def _ids(n: int) -> list[bytes]:
    return [(i * 0x9E3779B97F4A7C15 + 12345).to_bytes(16, "big") for i in range(1, n + 1)]


def test_fnv1a_matches_published_vectors():
    # FNV-1a 64 test vectors from the FNV reference (isthe.com/chongo/tech/comp/fnv)
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def test_threshold_matches_reference_big_float():
    # calculateThreshold(ratio) in probabilistic.go: (2^64-1)*ratio at 64-bit precision, truncated
    assert threshold(100) == 2**64 - 1
    assert threshold(0) == 0
    assert threshold(50) == 2**63 - 1  # 2^63 - 0.5 fits 64 bits exactly, then truncates
    assert threshold(10) == int(Fraction(2**64 - 1) * Fraction(0.1))  # exact product, truncated


@pytest.mark.parametrize("pct", [0, 1, 10, 50, 100])
def test_probabilistic_is_fnv_of_salt_and_trace_id(pct):
    policy = {"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": pct}}
    eng = engine([policy])
    kept = 0
    for tid in _ids(400):
        expected = fnv1a_64(b"default-hash-seed" + tid) <= threshold(pct)
        verdict = eng.decide(view(span(trace_id=tid), trace_id=tid))
        assert verdict.keep is expected
        if verdict.keep:
            kept += 1
            assert verdict.sample_rate == pytest.approx(100 / pct)
    assert abs(kept - 4 * pct) <= max(6, 4 * pct * 0.35)


def test_probabilistic_salt_changes_the_choice():
    salted = {"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50, "hash_salt": "layer-2"}}
    plain = {"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}}
    a = [engine([salted]).decide(view(span(trace_id=t), trace_id=t)).keep for t in _ids(64)]
    b = [engine([plain]).decide(view(span(trace_id=t), trace_id=t)).keep for t in _ids(64)]
    assert a != b
    assert all(x is (fnv1a_64(b"layer-2" + t) <= threshold(50)) for x, t in zip(a, _ids(64)))


STRING = [
    ("exact-span", {"values": ["GET"]}, [span(attributes={"k": "GET"})], S),
    ("exact-resource", {"values": ["GET"]}, [resource_spans([span()], {"k": "GET"})], S),
    ("exact-miss", {"values": ["GET"]}, [span(attributes={"k": "POST"})], N),
    ("missing-key", {"values": ["GET"]}, [span(attributes={"other": "GET"})], N),
    ("exact-is-not-substring", {"values": ["GET"]}, [span(attributes={"k": "GETX"})], N),
    ("non-string-value", {"values": ["1"]}, [span(attributes={"k": 1})], N),
    ("empty-value-ignored", {"values": [""]}, [span(attributes={"k": ""})], N),
    ("regex-unanchored", {"values": ["val"], "enabled_regex_matching": True}, [span(attributes={"k": "my-value"})], S),
    ("regex-anchored-miss", {"values": ["^val"], "enabled_regex_matching": True}, [span(attributes={"k": "my-value"})], N),
    ("regex-second-pattern", {"values": ["^x", "/v1/name/.+"], "enabled_regex_matching": True}, [span(attributes={"k": "/v1/name/7"})], S),
    ("regex-resource", {"values": ["svc-.*"], "enabled_regex_matching": True}, [resource_spans([span()], {"k": "svc-a"})], S),
    ("invert-match-present", {"values": ["GET"], "invert_match": True}, [span(attributes={"k": "GET"})], N),
    ("invert-other-value", {"values": ["GET"], "invert_match": True}, [span(attributes={"k": "POST"})], S),
    # invert_match: "if the specified Key does not match on any resource or span attributes, data will be sampled"
    ("invert-missing-key", {"values": ["GET"], "invert_match": True}, [span()], S),
    ("invert-any-span-blocks", {"values": ["GET"], "invert_match": True}, [span(attributes={"k": "POST"}), span(attributes={"k": "GET"})], N),
    ("invert-resource-blocks", {"values": ["GET"], "invert_match": True}, [resource_spans([span()], {"k": "GET"})], N),
    ("invert-regex", {"values": ["^/health"], "enabled_regex_matching": True, "invert_match": True}, [span(attributes={"k": "/healthz"})], N),
    ("empty-trace", {"values": ["GET"]}, [], N),
    ("invert-empty-trace", {"values": ["GET"], "invert_match": True}, [], S),
]


@pytest.mark.parametrize("cfg,groups,expected", [c[1:] for c in STRING], ids=[c[0] for c in STRING])
def test_string_attribute(cfg, groups, expected):
    check({"name": "s", "type": "string_attribute", "string_attribute": {"key": "k", **cfg}}, view(*groups), expected)


def test_string_attribute_regex_cache_stays_bounded():
    policy = {"name": "s", "type": "string_attribute", "string_attribute": {"key": "k", "values": ["^a"], "enabled_regex_matching": True, "cache_max_size": 3}}
    eng = engine([policy])
    for value, expected in [("a1", True), ("b1", False), ("a2", True), ("b2", False), ("a1", True), ("b1", False)]:
        assert eng.decide(view(span(attributes={"k": value}))).keep is expected
    assert len(eng.policies[0].matches.cache) == 3


NUMERIC = [
    ("in-range", {"min_value": 50, "max_value": 100}, [span(attributes={"k": 75})], S),
    ("min-inclusive", {"min_value": 50, "max_value": 100}, [span(attributes={"k": 50})], S),
    ("max-inclusive", {"min_value": 50, "max_value": 100}, [span(attributes={"k": 100})], S),
    ("below", {"min_value": 50, "max_value": 100}, [span(attributes={"k": 49})], N),
    ("above", {"min_value": 50, "max_value": 100}, [span(attributes={"k": 101})], N),
    ("only-min", {"min_value": 500}, [span(attributes={"k": 10**12})], S),
    ("only-max", {"max_value": 399}, [span(attributes={"k": -5})], S),
    ("resource", {"min_value": 50}, [resource_spans([span()], {"k": 60})], S),
    ("missing-key", {"min_value": 50}, [span(attributes={"j": 60})], N),
    ("string-value-never-matches", {"min_value": 50}, [span(attributes={"k": "60"})], N),
    ("invert-in-range", {"min_value": 50, "max_value": 100, "invert_match": True}, [span(attributes={"k": 75})], N),
    ("invert-out-of-range", {"min_value": 50, "max_value": 100, "invert_match": True}, [span(attributes={"k": 7})], S),
    ("invert-missing", {"min_value": 50, "invert_match": True}, [span()], S),
    ("empty-trace", {"min_value": 1}, [], N),
]


@pytest.mark.parametrize("cfg,groups,expected", [c[1:] for c in NUMERIC], ids=[c[0] for c in NUMERIC])
def test_numeric_attribute(cfg, groups, expected):
    check({"name": "n", "type": "numeric_attribute", "numeric_attribute": {"key": "k", **cfg}}, view(*groups), expected)


BOOLEAN = [
    ("true", {"value": True}, [span(attributes={"k": True})], S),
    ("false-wanted", {"value": False}, [span(attributes={"k": False})], S),
    ("mismatch", {"value": True}, [span(attributes={"k": False})], N),
    ("string-true-is-not-bool", {"value": True}, [span(attributes={"k": "true"})], N),
    ("resource", {"value": True}, [resource_spans([span()], {"k": True})], S),
    ("missing", {"value": True}, [span()], N),
    ("invert-present", {"value": True, "invert_match": True}, [span(attributes={"k": True})], N),
    ("invert-missing", {"value": True, "invert_match": True}, [span()], S),
]


@pytest.mark.parametrize("cfg,groups,expected", [c[1:] for c in BOOLEAN], ids=[c[0] for c in BOOLEAN])
def test_boolean_attribute(cfg, groups, expected):
    check({"name": "b", "type": "boolean_attribute", "boolean_attribute": {"key": "k", **cfg}}, view(*groups), expected)


TRACE_STATE = [
    ("match", [span(trace_state="key3=value1,other=x")], S),
    ("second-value", [span(trace_state="a=b,key3=value2")], S),
    ("other-value", [span(trace_state="key3=value9")], N),
    ("no-tracestate", [span()], N),
    ("any-span", [span(), span(trace_state="key3=value1")], S),
]


@pytest.mark.parametrize("spans,expected", [c[1:] for c in TRACE_STATE], ids=[c[0] for c in TRACE_STATE])
def test_trace_state(spans, expected):
    check({"name": "ts", "type": "trace_state", "trace_state": {"key": "key3", "values": ["value1", "value2"]}}, view(*spans), expected)


@pytest.mark.parametrize(
    "flags,expected", [([0, 0], N), ([0, 1], S), ([0x101, 0], S), ([0x100], N)], ids=["none", "one-sampled", "sampled-with-context-bits", "context-bits-only"]
)
def test_trace_flags(flags, expected):
    check({"name": "tf", "type": "trace_flags"}, view(*[span(flags=f) for f in flags]), expected)


SPAN_COUNT = [
    ("inside", {"min_spans": 2, "max_spans": 3}, 2, S),
    ("max-inclusive", {"min_spans": 2, "max_spans": 3}, 3, S),
    ("above", {"min_spans": 2, "max_spans": 3}, 4, N),
    ("below", {"min_spans": 2, "max_spans": 3}, 1, N),
    ("no-upper-limit", {"min_spans": 2}, 50, S),
]


@pytest.mark.parametrize("cfg,count,expected", [c[1:] for c in SPAN_COUNT], ids=[c[0] for c in SPAN_COUNT])
def test_span_count(cfg, count, expected):
    check({"name": "sc", "type": "span_count", "span_count": cfg}, view(*[span() for _ in range(count)]), expected)


def test_trace_view_is_built_from_the_split_request():
    trace = view(resource_spans([span(start_ms=5, end_ms=20), span(root=True, start_ms=0, end_ms=9)], {"service.name": "a"}))
    assert trace.trace_id == TRACE_ID
    assert trace.span_count == 2
    assert trace.duration_ns == 20_000_000
    assert trace.root is not None and trace.root.span.start_time_unix_nano == trace.start_time_unix_nano


def test_span_columns_read_what_the_full_parse_reads():
    spans = [
        span(status=2, trace_state="ot=th:8", flags=0x101, events=[("retry", {"n": 1})], attributes={"k": "v"}),
        span(root=True, start_ms=3, end_ms=40, status=1),
        span(start_ms=7, end_ms=8, trace_state="vendor=x"),
        span(start_ms=1, end_ms=2),
    ]
    trace = view(resource_spans(spans[:2], {"service.name": "a"}), resource_spans(spans[2:], {"service.name": "b"}))
    full = [ref.span for ref in trace.spans]
    assert trace.span_count == len(full) == 4
    assert trace.status_codes == {s.status.code for s in full} == {0, 1, 2}
    assert trace.span_flags == [s.flags for s in full if s.flags]
    assert trace.trace_states == [s.trace_state for s in full if s.trace_state]
    assert trace.start_time_unix_nano == min(s.start_time_unix_nano for s in full)
    assert trace.end_time_unix_nano == max(s.end_time_unix_nano for s in full)


def test_a_span_without_start_time_starts_the_trace_at_zero():
    late = span(end_ms=5)
    late.start_time_unix_nano = 0
    trace = view(resource_spans([span(start_ms=1, end_ms=9), late]))
    assert trace.start_time_unix_nano == 0
    assert trace.status_codes == {0}
