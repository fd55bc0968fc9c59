"""Vote combination, as the reference's ``makeDecision`` (processor.go) does it."""

from __future__ import annotations

from dataclasses import dataclass

from tailsampler.policies import Decision, Engine

from .policy_traces import FakeClock, engine, span, view

S, N, D, E = Decision.SAMPLED, Decision.NOT_SAMPLED, Decision.DROPPED, Decision.ERROR

KEEP_ALL = {"name": "all", "type": "always_sample"}
ERRORS = {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
SLOW = {"name": "slow", "type": "latency", "latency": {"threshold_ms": 1000}}
DROP_HEALTH = {
    "name": "no-health",
    "type": "drop",
    "drop": {"drop_sub_policy": [{"name": "health", "type": "string_attribute", "string_attribute": {"key": "url.path", "values": ["/health"]}}]},
}


def test_no_policies_means_not_sampled():
    verdict = engine([]).decide(view(span()))
    assert (verdict.keep, verdict.policy, verdict.votes) == (False, None, {})


def test_sampled_beats_not_sampled_and_first_sampler_is_credited():
    verdict = engine([ERRORS, SLOW, KEEP_ALL]).decide(view(span(end_ms=2000)))
    assert verdict.keep and verdict.policy == "slow"
    assert verdict.votes == {"errors": N, "slow": S, "all": S}


def test_all_not_sampled_drops_the_trace():
    verdict = engine([ERRORS, SLOW]).decide(view(span()))
    assert not verdict.keep and verdict.policy is None
    assert verdict.votes == {"errors": N, "slow": N}


def test_drop_beats_sampled_and_is_evaluated_first():
    # drop policies run before all others and stop evaluation at once (processor.go makeDecision)
    verdict = engine([KEEP_ALL, DROP_HEALTH]).decide(view(span(attributes={"url.path": "/health"})))
    assert not verdict.keep and verdict.policy == "no-health"
    assert verdict.votes == {"no-health": D}


def test_drop_policy_not_matching_lets_others_decide():
    verdict = engine([KEEP_ALL, DROP_HEALTH]).decide(view(span(attributes={"url.path": "/orders"})))
    assert verdict.keep and verdict.policy == "all"
    assert verdict.votes == {"no-health": N, "all": S}


def test_sample_on_first_match_stops_at_first_sampled():
    eng = engine([ERRORS, SLOW, KEEP_ALL], sample_on_first_match=True)
    verdict = eng.decide(view(span(end_ms=2000)))
    assert verdict.keep and verdict.policy == "slow"
    assert verdict.votes == {"errors": N, "slow": S}


def test_sample_on_first_match_still_lets_drop_win():
    eng = engine([KEEP_ALL, DROP_HEALTH], sample_on_first_match=True)
    assert not eng.decide(view(span(attributes={"url.path": "/health"}))).keep


def test_without_first_match_every_policy_votes():
    # stateful policies later in the list still see the trace (their budgets are spent)
    eng = engine([KEEP_ALL, {"name": "rl", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 1, "burst_capacity": 1}}])
    assert eng.decide(view(span())).votes["rl"] is S
    assert eng.decide(view(span())).votes["rl"] is N


@dataclass
class Failing:
    name: str = "broken"

    def evaluate(self, trace):
        raise RuntimeError("cannot read this trace")


@dataclass
class Voting:
    name: str
    decision: Decision

    def evaluate(self, trace):
        return self.decision


def test_policy_error_is_counted_and_skipped():
    eng = Engine([Failing(), Voting("yes", S)], [False, False], sample_on_first_match=False)
    verdict = eng.decide(view(span()))
    assert verdict.keep and verdict.policy == "yes"
    assert verdict.votes == {"broken": E, "yes": S}
    assert list(verdict.votes.values()).count(E) == 1


def test_error_vote_alone_does_not_keep():
    eng = Engine([Voting("err", E)], [False], sample_on_first_match=False)
    verdict = eng.decide(view(span()))
    assert not verdict.keep and list(verdict.votes.values()).count(E) == 1


def test_policy_names_in_config_order():
    assert engine([KEEP_ALL, DROP_HEALTH, ERRORS]).policy_names == ["all", "no-health", "errors"]


def test_rate_limiting_refills_with_the_injected_clock():
    clock = FakeClock()
    eng = engine([{"name": "rl", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 2}}], clock)
    three = view(span(), span(), span())
    assert eng.decide(three).keep  # burst defaults to 2x rate: 4 tokens
    assert not eng.decide(three).keep  # 1 token left
    clock.now += 1.0  # +2 tokens
    assert eng.decide(three).keep
    assert not eng.decide(view(span())).keep


def test_bytes_limiting_costs_the_protobuf_size():
    clock = FakeClock()
    trace = view(span(attributes={"payload": "x" * 200}))
    size = trace.byte_size
    eng = engine([{"name": "bl", "type": "bytes_limiting", "bytes_limiting": {"bytes_per_second": size, "burst_capacity": size}}], clock)
    assert eng.decide(trace).keep
    assert not eng.decide(trace).keep
    clock.now += 1.0
    assert eng.decide(trace).keep
