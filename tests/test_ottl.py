"""The OTTL condition subset and the ``ottl_condition`` policy (the reference's ``ottl.go``)."""

from __future__ import annotations

import pytest

from tailsampler.policies import Decision
from tailsampler.policies.ottl import OttlSyntaxError, Target, parse_condition

from .policy_traces import engine, resource_spans, span, view, with_map_attribute

S, N, E = Decision.SAMPLED, Decision.NOT_SAMPLED, Decision.ERROR

TRACE = view(
    resource_spans(
        [
            span(
                "GET /orders/{id}",
                root=True,
                kind=2,
                status=2,
                start_ms=0,
                end_ms=250,
                attributes={"http.route": "/orders/{id}", "http.status_code": 503, "retry": True, "ratio": 0.5},
                events=[("exception", {"exception.type": "TimeoutError"})],
            )
        ],
        {"service.name": "checkout", "deployment.environment": "prod"},
        scope="io.opentelemetry.http",
    )
)
SPAN = Target(TRACE.spans[0])
EVENT = Target(TRACE.spans[0], TRACE.spans[0].span.events[0])

SPAN_CASES = [
    ('name == "GET /orders/{id}"', True),
    ('name != "GET /orders/{id}"', False),
    ("kind == SPAN_KIND_SERVER", True),
    ("kind == SPAN_KIND_CLIENT", False),
    ("status.code == STATUS_CODE_ERROR", True),
    ('attributes["http.route"] == "/orders/{id}"', True),
    ('attributes["http.status_code"] >= 500', True),
    ('attributes["http.status_code"] < 500', False),
    ('attributes["http.status_code"] == 503.0', True),
    ('attributes["ratio"] <= 0.5', True),
    ('attributes["retry"] == true', True),
    ('attributes["retry"]', True),
    ('attributes["missing"] == nil', True),
    ('attributes["missing"] != nil', False),
    ('attributes["missing"] > 1', False),
    ('attributes["http.status_code"] == "503"', False),  # different kinds are never equal
    ('attributes["http.status_code"] != "503"', True),
    ('resource.attributes["service.name"] == "checkout"', True),
    ('instrumentation_scope.name == "io.opentelemetry.http"', True),
    ("end_time_unix_nano - 1 > 0", None),  # arithmetic is not in the subset
    ("end_time_unix_nano > start_time_unix_nano", True),
    ('IsMatch(name, "^GET ")', True),
    ('IsMatch(attributes["http.route"], "orders")', True),
    ('IsMatch(attributes["http.status_code"], "^5")', True),
    ('IsMatch(attributes["missing"], ".*")', False),
    ('not IsMatch(name, "^POST")', True),
    ('kind == SPAN_KIND_SERVER and attributes["http.status_code"] >= 500', True),
    ('kind == SPAN_KIND_CLIENT or attributes["http.status_code"] >= 500', True),
    ('not (kind == SPAN_KIND_SERVER and attributes["retry"] == true)', False),
    ('kind == SPAN_KIND_CLIENT and (attributes["retry"] == true or true)', False),
    ('kind == SPAN_KIND_CLIENT and attributes["retry"] == true or true', True),  # and binds tighter
    ('name == "a \\"quoted\\" name"', False),
]


@pytest.mark.parametrize("text,expected", SPAN_CASES, ids=[c[0] for c in SPAN_CASES])
def test_span_context_conditions(text, expected):
    if expected is None:
        with pytest.raises(OttlSyntaxError):
            parse_condition(text, "span")
        return
    assert parse_condition(text, "span")(SPAN) is expected


EVENT_CASES = [
    ('name == "exception"', True),
    ('attributes["exception.type"] == "TimeoutError"', True),
    ('span.name == "GET /orders/{id}"', True),
    ('span.attributes["http.status_code"] == 503', True),
    ('resource.attributes["deployment.environment"] == "prod"', True),
]


@pytest.mark.parametrize("text,expected", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_spanevent_context_conditions(text, expected):
    assert parse_condition(text, "spanevent")(EVENT) is expected


SYNTAX = [
    ('name = "x"', 6),
    ('name == "x', 9),
    ("name ==", 8),
    ('attributes["k"] == SPAN_KIND_BOGUS', 20),
    ('foo == "x"', 1),
    ('Unknown(name) == "x"', 1),
    ('IsMatch(name, "(")', 15),
    ('name == "x" junk', 13),
    ('"just a string"', 1),
]


@pytest.mark.parametrize("text,column", SYNTAX, ids=[c[0] for c in SYNTAX])
def test_syntax_errors_carry_the_column(text, column):
    with pytest.raises(OttlSyntaxError) as info:
        parse_condition(text, "span")
    assert info.value.column == column


def ottl(span_conds=(), event_conds=(), mode=None) -> dict:
    cfg: dict = {"span": list(span_conds), "spanevent": list(event_conds)}
    if mode:
        cfg["error_mode"] = mode
    return {"name": "o", "type": "ottl_condition", "ottl_condition": cfg}


def test_policy_conditions_are_ored_and_events_checked():
    assert engine([ottl(['name == "x"', "kind == SPAN_KIND_SERVER"])]).decide(TRACE).keep
    assert not engine([ottl(['name == "x"'])]).decide(TRACE).keep
    assert engine([ottl([], ['attributes["exception.type"] == "TimeoutError"'])]).decide(TRACE).keep
    assert not engine([ottl([], ['name == "log"'])]).decide(TRACE).keep
    assert not engine([ottl(["kind == SPAN_KIND_SERVER"])]).decide(view()).keep


def _with_map_attribute():
    return view(with_map_attribute(span(name="target"), "m", {"a": "b"}))


@pytest.mark.parametrize("mode,vote,errors", [("propagate", E, 1), (None, E, 1), ("ignore", S, 0)])
def test_error_mode(mode, vote, errors):
    trace = _with_map_attribute()
    eng = engine([ottl(['IsMatch(attributes["m"], "a")', 'name == "target"'], mode=mode)])
    verdict = eng.decide(trace)
    assert verdict.votes["o"] is vote
    assert list(verdict.votes.values()).count(E) == errors


def test_nested_map_index():
    assert parse_condition('attributes["m"]["a"] == "b"', "span")(Target(_with_map_attribute().spans[0]))
