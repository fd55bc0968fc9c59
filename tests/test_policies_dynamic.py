"""``dynamic`` (per-key goal rate) and ``throughput`` (traces per second), on a simulated clock."""

from __future__ import annotations

import random

import pytest

from tailsampler.policies.dynamic import spread_rates

from .policy_traces import FakeClock, engine, resource_spans, span, view

ROUTES = [("/checkout", 1), ("/search", 9), ("/home", 90)]  # weights: rare, mid, common


def traffic(n: int, seed: int):
    rng = random.Random(seed)
    routes = [r for r, w in ROUTES for _ in range(w)]
    for _ in range(n):
        route = rng.choice(routes)
        tid = rng.getrandbits(128).to_bytes(16, "big")
        yield route, view(resource_spans([span(root=True, attributes={"http.route": route}, trace_id=tid)], {"service.name": "shop"}), trace_id=tid)


def test_spread_rates_hits_the_goal_and_favours_rare_keys():
    counts = {"rare": 10.0, "mid": 90.0, "common": 900.0}
    rates = spread_rates(10, counts)
    assert rates["rare"] == 1.0
    assert rates["rare"] < rates["mid"] < rates["common"]
    kept = sum(c / rates[k] for k, c in counts.items())
    assert kept == pytest.approx(100, rel=0.15)


def test_dynamic_keeps_rare_keys_more_often_and_overall_near_goal():
    clock = FakeClock()
    pol = {"name": "dyn", "type": "dynamic", "dynamic": {"key_fields": ["service.name", "http.route"], "goal_sample_rate": 10, "adjustment_interval": "1s"}}
    eng = engine([pol], clock)
    seen: dict[str, int] = {}
    kept: dict[str, int] = {}
    rates: set[float] = set()
    for i, (route, trace) in enumerate(traffic(6000, seed=7)):
        clock.now = 1000.0 + i / 1000  # 1000 traces per simulated second
        verdict = eng.decide(trace)
        if i < 2000:  # let the moving average settle
            continue
        seen[route] = seen.get(route, 0) + 1
        if verdict.keep:
            kept[route] = kept.get(route, 0) + 1
            rates.add(verdict.sample_rate)
    ratio = {r: kept.get(r, 0) / seen[r] for r in seen}
    assert ratio["/checkout"] > 0.9
    assert ratio["/checkout"] > 3 * ratio["/search"] > 3 * ratio["/home"] / 1.5
    assert ratio["/home"] < 0.1
    overall = sum(kept.values()) / sum(seen.values())
    assert 0.07 < overall < 0.14  # goal: 1 in 10
    assert max(rates) > 10 and min(rates) == 1.0


def test_dynamic_status_class_groups_codes():
    from tailsampler.policies.keys import KeyBuilder

    builder = KeyBuilder(("http.response.status_code",), status_class=True)
    assert builder.key(view(span(root=True, attributes={"http.response.status_code": 503}))) == "5xx"
    assert KeyBuilder(("status.code", "x")).key(view(span(root=True), span(status=2))) == "ERROR\x1f-"


def throughput(**cfg) -> dict:
    return {"name": "tp", "type": "throughput", "throughput": cfg}


def test_throughput_overall_cap_per_simulated_second():
    clock = FakeClock()
    eng = engine([throughput(traces_per_second=5)], clock)
    per_second = []
    for _ in range(4):
        per_second.append(sum(eng.decide(view(span())).keep for _ in range(50)))
        clock.now += 1.0
    assert per_second == [5, 5, 5, 5]


def test_throughput_spreads_budget_across_keys():
    clock = FakeClock()
    eng = engine([throughput(traces_per_second=10, key_fields=["http.route"], adjustment_interval="1s")], clock)
    kept = {"/flood": 0, "/rare": 0}
    for second in range(6):
        for i in range(200):
            clock.now = 1000.0 + second + i / 200
            route = "/rare" if i % 40 == 0 else "/flood"
            if eng.decide(view(span(root=True, attributes={"http.route": route}))).keep and second >= 2:
                kept[route] += 1
    assert kept["/rare"] == 4 * 5  # every rare trace kept once the budget is split in two
    assert kept["/flood"] <= 4 * 5 + 5
    assert sum(kept.values()) <= 4 * 10 + 10
