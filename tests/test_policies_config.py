"""Config errors name the file, the key path and the problem, end to end through ``parse_config``;
the reference README's example loads unchanged; kept-trace recording."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailsampler.collector.config import parse_config
from tailsampler.common.errors import ConfigError
from tailsampler.policies import PolicyContext, RecordingConfig, Verdict, build_engine, record
from tailsampler.policies.recording import threshold_for, with_threshold
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from .policy_traces import FakeClock, resource_spans, span, view

DATA = Path(__file__).parent / "data"


def load(policies_yaml: str) -> object:
    """Load as the collector does: decode the file, then build the policies; the loader names
    the file in front of the key path that ``build_engine`` reports."""
    text = "tail_sampling:\n  policies:\n" + "".join(f"    - {line}\n" for line in policies_yaml.strip().splitlines())
    config = parse_config(text, "x.yaml")
    try:
        return build_engine(config.tail_sampling, PolicyContext(FakeClock()))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("x.yaml: ") else f"x.yaml: {message}") from None


def error_of(policy: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(policy)
    return str(info.value)


ERRORS = [
    ("{name: a, type: nope}", "x.yaml: tail_sampling.policies[0].type: Invalid value 'nope'"),
    ("{name: a, type: latency, latency: {threshold_ms: fast}}", "x.yaml: tail_sampling.policies[0].latency.threshold_ms: Expected `int`"),
    ("{name: a, type: latency, latency: {treshold_ms: 5}}", "x.yaml: tail_sampling.policies[0].latency: Object contains unknown field `treshold_ms`"),
    ("{name: a, type: latency, latency: {threshold_ms: 500, upper_threshold_ms: 100}}", "x.yaml: tail_sampling.policies[0].latency.upper_threshold_ms: must be greater than threshold_ms (500)"),
    ("{type: always_sample}", "x.yaml: tail_sampling.policies[0]: Object missing required field `name`"),
    ("{name: '', type: always_sample}", "x.yaml: tail_sampling.policies[0].name: a policy needs a non-empty name"),
    ("{name: a, type: status_code, status_code: {status_codes: [ERROR, FAILED]}}", "x.yaml: tail_sampling.policies[0].status_code.status_codes[1]: unknown status code 'FAILED'"),
    ("{name: a, type: probabilistic, probabilistic: {sampling_percentage: 150}}", "x.yaml: tail_sampling.policies[0].probabilistic.sampling_percentage: must be between 0 and 100"),
    ("{name: a, type: string_attribute, string_attribute: {values: [x]}}", "x.yaml: tail_sampling.policies[0].string_attribute.key: the attribute key is required"),
    ("{name: a, type: string_attribute, string_attribute: {key: k, values: [ok, '(bad'], enabled_regex_matching: true}}", "x.yaml: tail_sampling.policies[0].string_attribute.values[1]: invalid regular expression '(bad'"),
    ("{name: a, type: numeric_attribute, numeric_attribute: {key: k}}", "x.yaml: tail_sampling.policies[0].numeric_attribute: at least one of min_value or max_value"),
    ("{name: a, type: numeric_attribute, numeric_attribute: {key: k, min_value: 9, max_value: 3}}", "x.yaml: tail_sampling.policies[0].numeric_attribute.max_value: must be greater than or equal to min_value (9)"),
    ("{name: a, type: boolean_attribute, boolean_attribute: {value: true}}", "x.yaml: tail_sampling.policies[0].boolean_attribute.key: the attribute key is required"),
    ("{name: a, type: trace_state, trace_state: {key: k}}", "x.yaml: tail_sampling.policies[0].trace_state.values: expected at least one value"),
    ("{name: a, type: trace_flags, trace_flags: {}}", "x.yaml: tail_sampling.policies[0]: Object contains unknown field `trace_flags`"),
    ("{name: a, type: span_count, span_count: {min_spans: 5, max_spans: 2}}", "x.yaml: tail_sampling.policies[0].span_count.max_spans: must be 0 or at least min_spans (5)"),
    ("{name: a, type: rate_limiting, rate_limiting: {spans_per_second: 0}}", "x.yaml: tail_sampling.policies[0].rate_limiting.spans_per_second: must be greater than 0"),
    ("{name: a, type: bytes_limiting, bytes_limiting: {bytes_per_second: -1}}", "x.yaml: tail_sampling.policies[0].bytes_limiting.bytes_per_second: must be greater than 0"),
    ("{name: a, type: ottl_condition, ottl_condition: {span: ['name == \"x\"', 'name = \"y\"']}}", "x.yaml: tail_sampling.policies[0].ottl_condition.span[1]: cannot parse OTTL condition 'name = \"y\"': column 6: unexpected character '='"),
    ("{name: a, type: ottl_condition, ottl_condition: {error_mode: loud, span: ['true']}}", "x.yaml: tail_sampling.policies[0].ottl_condition.error_mode: Invalid enum value 'loud'"),
    ("{name: a, type: ottl_condition, ottl_condition: {}}", "x.yaml: tail_sampling.policies[0].ottl_condition: expected at least one condition"),
    ("{name: a, type: and, and: {and_sub_policy: []}}", "x.yaml: tail_sampling.policies[0].and.and_sub_policy: expected at least one sub-policy"),
    ("{name: a, type: and, and: {and_sub_policy: [{name: b, type: latency, latency: {threshold_ms: -1}}]}}", "x.yaml: tail_sampling.policies[0].and.and_sub_policy[0].latency.threshold_ms: must be 0 or positive"),
    ("{name: a, type: and, and: {and_sub_policy: [{name: b, type: always_sample}, {name: b, type: always_sample}]}}", "x.yaml: tail_sampling.policies[0].and.and_sub_policy[1].name: duplicate policy name 'b'"),
    ("{name: a, type: not, not: {}}", "x.yaml: tail_sampling.policies[0].not.not_sub_policy: a sub-policy is required"),
    ("{name: a, type: drop, drop: {drop_sub_policy: [{name: b, type: span_count, span_count: {min_spans: -2}}]}}", "x.yaml: tail_sampling.policies[0].drop.drop_sub_policy[0].span_count.min_spans: must be 0 or positive"),
    ("{name: a, type: composite, composite: {composite_sub_policy: [{name: b, type: always_sample}]}}", "x.yaml: tail_sampling.policies[0].composite.max_total_spans_per_second: must be greater than 0"),
    ("{name: a, type: composite, composite: {max_total_spans_per_second: 10, policy_order: [c], composite_sub_policy: [{name: b, type: always_sample}]}}", "x.yaml: tail_sampling.policies[0].composite.policy_order[0]: no sub-policy named 'c'"),
    ("{name: a, type: composite, composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: b, type: always_sample}], rate_allocation: [{policy: b, percent: 60}, {policy: b2, percent: 50}]}}", "x.yaml: tail_sampling.policies[0].composite.rate_allocation[1].policy: no sub-policy named 'b2'"),
    ("{name: a, type: dynamic, dynamic: {goal_sample_rate: 10}}", "x.yaml: tail_sampling.policies[0].dynamic.key_fields: expected at least one field"),
    ("{name: a, type: dynamic, dynamic: {key_fields: [k], weight: 2}}", "x.yaml: tail_sampling.policies[0].dynamic.weight: must be in (0, 1]"),
    ("{name: a, type: throughput, throughput: {}}", "x.yaml: tail_sampling.policies[0].throughput.traces_per_second: must be greater than 0"),
]


@pytest.mark.parametrize("policy,message", ERRORS, ids=[e[1].split(": ")[1] + ":" + e[0][:30] for e in ERRORS])
def test_config_errors_name_file_path_and_problem(policy, message):
    assert error_of(policy).startswith(message)


def test_duplicate_top_level_names_are_refused():
    with pytest.raises(ConfigError, match=r"^x.yaml: tail_sampling.policies\[1\].name: duplicate policy name 'a'$"):
        load("{name: a, type: always_sample}\n{name: a, type: trace_flags}")


def test_reference_readme_example_loads_and_validates_unchanged():
    block = yaml.safe_load((DATA / "otel_readme_tail_sampling.yaml").read_text())["processors"]["tail_sampling"]
    config = parse_config(yaml.safe_dump({"tail_sampling": block}), "readme.yaml")
    ts = config.tail_sampling
    assert (ts.decision_wait, ts.num_traces, ts.expected_new_traces_per_sec) == (10.0, 100, 10)
    assert ts.decision_cache.sampled_cache_size == 100_000
    engine = build_engine(ts, PolicyContext(FakeClock()))
    assert len(engine.policy_names) == 16
    # drop-policy-1 drops /health even though test-policy-1 samples everything
    verdict = engine.decide(view(span(attributes={"url.path": "/health"})))
    assert not verdict.keep and verdict.policy == "drop-policy-1"
    kept = engine.decide(view(span(attributes={"url.path": "/orders"})))
    assert kept.keep and kept.policy == "test-policy-1"


def test_recording_is_off_by_default_and_bytes_pass_through():
    trace = view(span())
    options = parse_config("tail_sampling: {policies: [{name: all, type: always_sample}]}", "x.yaml").tail_sampling.recording
    assert not options.enabled
    assert record(trace.data, Verdict(True, "p", 10.0), options) is trace.data


def test_recording_policy_and_rate_on_scope_attributes():
    trace = view(resource_spans([span(), span()]), resource_spans([span()], {"service.name": "b"}))
    data = record(trace.data, Verdict(True, "slow", 4.0), RecordingConfig(policy_attribute=True, sample_rate_attribute=True))
    parsed = TracesData.FromString(data)
    scopes = [ss.scope for rs in parsed.resource_spans for ss in rs.scope_spans]
    assert len(scopes) == 2
    for scope in scopes:
        attrs = {kv.key: kv.value for kv in scope.attributes}
        assert attrs["sampling.policy"].string_value == "slow"
        assert attrs["sampling.sample_rate"].double_value == 4.0
    assert sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans) == 3


def test_recording_threshold_keeps_stricter_incoming_and_other_entries():
    assert threshold_for(1.0) == 0
    assert threshold_for(4.0) == 3 << 54  # p = 1/4: T = 0.75 * 2^56 -> "c"
    assert with_threshold("", threshold_for(4.0)) == "ot=th:c"
    assert with_threshold("vendor=x,ot=rv:abcdef01234567", threshold_for(2.0)) == "ot=th:8;rv:abcdef01234567,vendor=x"
    assert with_threshold("ot=th:f", threshold_for(2.0)) == "ot=th:f"  # incoming 1/16 is stricter
    assert with_threshold("ot=th:4", threshold_for(2.0)) == "ot=th:8"


def test_recording_threshold_only_for_known_rates():
    trace = view(span(trace_state="ot=th:4"))
    options = RecordingConfig(tracestate_threshold=True)
    assert record(trace.data, Verdict(True, "errors", None), options) is trace.data
    rewritten = TracesData.FromString(record(trace.data, Verdict(True, "p", 10.0), options))
    assert rewritten.resource_spans[0].scope_spans[0].spans[0].trace_state == "ot=th:e6666666666666"
