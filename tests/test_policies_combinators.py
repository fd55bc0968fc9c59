"""``and``, ``not``, ``drop`` and ``composite`` through the engine, budgets on a simulated clock."""

from __future__ import annotations

import pytest

from tailsampler.policies import Decision

from .policy_traces import FakeClock, engine, resource_spans, span, view, with_map_attribute

S, N, D, E = Decision.SAMPLED, Decision.NOT_SAMPLED, Decision.DROPPED, Decision.ERROR


def sattr(name: str, key: str, *values: str, **extra) -> dict:
    return {"name": name, "type": "string_attribute", "string_attribute": {"key": key, "values": list(values), **extra}}


ERR = {"name": "err", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
SVC = sattr("svc", "service.name", "checkout")


def and_policy(*subs: dict) -> dict:
    return {"name": "both", "type": "and", "and": {"and_sub_policy": list(subs)}}


@pytest.mark.parametrize(
    "groups,expected",
    [
        ([resource_spans([span(status=2)], {"service.name": "checkout"})], S),
        ([resource_spans([span(status=0)], {"service.name": "checkout"})], N),
        ([resource_spans([span(status=2)], {"service.name": "cart"})], N),
        ([], N),
    ],
    ids=["both-match", "only-service", "only-error", "empty-trace"],
)
def test_and_samples_only_when_every_sub_policy_samples(groups, expected):
    assert engine([and_policy(SVC, ERR)]).decide(view(*groups)).votes["both"] is expected


def test_and_compounds_sub_sampler_rates():
    pol = and_policy(SVC, {"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 100}})
    verdict = engine([pol]).decide(view(resource_spans([span()], {"service.name": "checkout"})))
    assert verdict.keep and verdict.sample_rate == 1.0


@pytest.mark.parametrize("status,expected", [(2, N), (0, S)], ids=["sub-sampled", "sub-not-sampled"])
def test_not_swaps_the_sub_policy_vote(status, expected):
    pol = {"name": "ok-only", "type": "not", "not": {"not_sub_policy": ERR}}
    assert engine([pol]).decide(view(span(status=status))).votes["ok-only"] is expected


@pytest.mark.parametrize(
    "attrs,expected",
    [({"url.path": "/health"}, D), ({"url.path": "/metrics"}, D), ({"url.path": "/orders"}, N), ({}, N)],
    ids=["health", "metrics", "other-path", "missing"],
)
def test_drop_votes_dropped_when_all_sub_policies_sample(attrs, expected):
    pol = {"name": "d", "type": "drop", "drop": {"drop_sub_policy": [sattr("paths", "url.path", r"\/health", r"\/metrics", enabled_regex_matching=True)]}}
    verdict = engine([{"name": "all", "type": "always_sample"}, pol]).decide(view(span(attributes=attrs)))
    assert verdict.votes["d"] is expected
    assert verdict.keep is (expected is not D)


def test_failing_sub_policy_fails_the_combinator():
    ottl = {"name": "o", "type": "ottl_condition", "ottl_condition": {"span": ['IsMatch(attributes["m"], "x")']}}
    eng = engine([and_policy(ottl, ERR), {"name": "all", "type": "always_sample"}])
    assert eng.decide(view(span(attributes={"m": "x"}, status=2))).votes["both"] is S
    verdict = eng.decide(view(with_map_attribute(span(status=2), "m", {"x": "y"})))
    assert verdict.votes["both"] is E and verdict.keep and verdict.policy == "all"
    assert list(verdict.votes.values()).count(E) == 1


def composite(order: list[str] | None, allocation: list[dict], total: int = 10) -> dict:
    cfg = {
        "max_total_spans_per_second": total,
        "composite_sub_policy": [
            sattr("vip", "tier", "vip"),
            ERR,
            {"name": "rest", "type": "always_sample"},
        ],
        "rate_allocation": allocation,
    }
    if order is not None:
        cfg["policy_order"] = order
    return {"name": "c", "type": "composite", "composite": cfg}


def test_composite_budget_per_sub_policy_per_simulated_second():
    clock = FakeClock()
    eng = engine([composite(None, [{"policy": "vip", "percent": 50}, {"policy": "err", "percent": 30}])], clock)
    vip = view(span(attributes={"tier": "vip"}))
    kept_per_second = []
    for _ in range(5):
        kept_per_second.append(sum(eng.decide(vip).keep for _ in range(20)))
        clock.now += 1.0
    # vip owns 50% of 10 spans/s: one second of capacity, refilled each simulated second
    assert kept_per_second == [5, 5, 5, 5, 5]


def test_composite_deciding_sub_policy_out_of_budget_does_not_fall_through():
    # composite.go: once the first sampling sub-policy is over budget the trace is not sampled
    clock = FakeClock()
    eng = engine([composite(None, [{"policy": "vip", "percent": 10}, {"policy": "err", "percent": 10}])], clock)
    vip = view(span(attributes={"tier": "vip"}))
    assert eng.decide(vip).keep
    assert not eng.decide(vip).keep  # "rest" would still have budget, but is not asked


def test_composite_unallocated_sub_policies_share_the_remainder():
    clock = FakeClock()
    eng = engine([composite(None, [{"policy": "vip", "percent": 50}, {"policy": "err", "percent": 30}])], clock)
    plain = view(span())
    assert sum(eng.decide(plain).keep for _ in range(10)) == 2  # 10 - 5 - 3 spans/s left for "rest"


def test_composite_honours_policy_order():
    # The reference evaluates in list order and ignores policy_order (contrib issue #36955);
    # its README says policy_order orders the sub-policies, which is what happens here.
    clock = FakeClock()
    alloc = [{"policy": "vip", "percent": 10}, {"policy": "err", "percent": 50}]
    eng = engine([composite(["err", "vip", "rest"], alloc)], clock)
    both = view(span(attributes={"tier": "vip"}, status=2))
    assert sum(eng.decide(both).keep for _ in range(10)) == 5  # err's share decides, not vip's 1


def test_composite_trace_larger_than_its_share_is_never_kept():
    eng = engine([composite(None, [{"policy": "vip", "percent": 20}])], FakeClock())
    assert not eng.decide(view(*[span(attributes={"tier": "vip"}) for _ in range(3)])).keep


def test_composite_uses_context_token_buckets_with_stable_unique_keys():
    from tailsampler.policies import PolicyContext, build_engine
    from tailsampler.policies.base import LocalTokenBucket

    from .policy_traces import ts_config

    requested = []
    clock = FakeClock()

    def bucket(key, rate, capacity):
        requested.append((key, rate, capacity))
        return LocalTokenBucket(rate, capacity, clock)

    cfg = ts_config([composite(None, [{"policy": "vip", "percent": 50}]), {"name": "rl", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 7}}])
    build_engine(cfg, PolicyContext(clock, bucket))
    first = list(requested)
    build_engine(cfg, PolicyContext(clock, bucket))
    assert requested[len(first):] == first
    keys = [k for k, _, _ in first]
    assert len(set(keys)) == len(keys) == 3
    assert ("tail_sampling.policies[1].rate_limiting:rl", 7, 14) in first
