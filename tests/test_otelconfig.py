"""``validate --otel-collector-config``: tail_sampling blocks inside a whole OpenTelemetry
Collector config, validated and converted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailsampler.collector.config import parse_config
from tailsampler.common.errors import ConfigError
from tailsampler.collector.otelconfig import convert_otel_collector_config, validate_otel_collector_config
from tailsampler.policies import PolicyContext, build_engine

from .policy_traces import FakeClock

README_EXAMPLE = Path(__file__).parent / "data" / "otel_readme_tail_sampling.yaml"

COLLECTOR = """
receivers:
  otlp: {protocols: {grpc: {}}}
processors:
  batch: {}
  tail_sampling:
    decision_wait: 5s
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  tail_sampling/edge:
    policies:
      - {name: slow, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 50}}
      - {name: odd, type: ottl_condition, ottl_condition: {span: ['name == ']}}
exporters:
  debug: {}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [tail_sampling, batch], exporters: [debug]}
"""


def test_reference_readme_example_validates(tmp_path):
    assert validate_otel_collector_config(README_EXAMPLE) == []


def test_one_message_per_problem_with_file_and_key_path(tmp_path):
    path = tmp_path / "otel.yaml"
    path.write_text(COLLECTOR)
    assert validate_otel_collector_config(path) == [
        f"{path}: processors.tail_sampling/edge.policies[0].latency.upper_threshold_ms: "
        "must be greater than threshold_ms (100), got 50",
        f"{path}: processors.tail_sampling/edge.policies[1].ottl_condition.span[0]: "
        "cannot parse OTTL condition 'name == ': column 9: expected a value, a path or a function call, found end of condition",
    ]


def test_schema_errors_carry_the_processor_path(tmp_path):
    path = tmp_path / "otel.yaml"
    path.write_text("processors:\n  tail_sampling:\n    num_traces: lots\n")
    assert validate_otel_collector_config(path) == [f"{path}: processors.tail_sampling.num_traces: Expected `int`, got `str`"]


@pytest.mark.parametrize(
    "text,problem",
    [("receivers: {}\n", "no processors section"), ("processors: {batch: {}}\n", "no tail_sampling or tail_sampling/<name> processor"), ("a: [\n", "not valid YAML")],
)
def test_files_without_tail_sampling(tmp_path, text, problem):
    path = tmp_path / "otel.yaml"
    path.write_text(text)
    (message,) = validate_otel_collector_config(path)
    assert message.startswith(f"{path}: ") and problem in message


def test_convert_gives_a_config_we_load(tmp_path):
    text = convert_otel_collector_config(README_EXAMPLE)
    config = parse_config(text, "converted.yaml")
    original = yaml.safe_load(README_EXAMPLE.read_text())["processors"]["tail_sampling"]
    assert yaml.safe_load(text)["tail_sampling"] == original
    assert len(build_engine(config.tail_sampling, PolicyContext(FakeClock())).policy_names) == 16


def test_convert_takes_the_pipelines_processor_or_the_one_named(tmp_path):
    path = tmp_path / "otel.yaml"
    path.write_text(COLLECTOR)
    written = yaml.safe_load(convert_otel_collector_config(path))
    assert written["tail_sampling"]["policies"][0]["status_code"] == {"status_codes": ["ERROR"]}
    assert written["exporters"] == [{"type": "debug", "name": "debug"}]
    assert "status_codes" in convert_otel_collector_config(path, "tail_sampling")
    with pytest.raises(ConfigError, match=r"processors.tail_sampling/edge.policies\[0\]"):
        convert_otel_collector_config(path, "tail_sampling/edge")


def test_a_file_of_processors_with_several_blocks_needs_a_name(tmp_path):
    path = tmp_path / "otel.yaml"
    path.write_text(yaml.safe_dump({"processors": yaml.safe_load(COLLECTOR)["processors"]}))
    with pytest.raises(ConfigError, match="several tail_sampling processors"):
        convert_otel_collector_config(path)
