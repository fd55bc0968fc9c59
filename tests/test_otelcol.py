"""A whole OpenTelemetry Collector config runs as it is, or says precisely what cannot run.

Configs are written as a Collector user has them (the tail_sampling README's example inside a
full config, two pipelines, named components, headers); traffic comes from the OpenTelemetry
SDK, and kept traces arrive at a real OTLP receiver downstream.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tailsampler.collector.config import read
from tailsampler.common.errors import ConfigError
from tailsampler.loadgen.processes import free_port, free_port_block
from tests.collectors import REPO
from tests.otlp_sink import GrpcSink
from tests.sdk import SdkClient
from tests.waiting import eventually

README_EXAMPLE = Path(__file__).parent / "data" / "otel_readme_tail_sampling.yaml"


def collector_config(sink: str, **changes: Any) -> dict[str, Any]:
    """A Collector config with a traces pipeline through the reference README's tail_sampling
    block into an otlp exporter, on free ports of this machine."""
    block = yaml.safe_load(README_EXAMPLE.read_text())["processors"]["tail_sampling"]
    block["decision_wait"] = "500ms"
    config: dict[str, Any] = {
        "extensions": {"health_check": {"endpoint": "127.0.0.1:0"}},
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
            "http": {"endpoint": f"127.0.0.1:{free_port()}", "max_request_body_size": 10 * 1024 * 1024},
        }}},
        "processors": {"memory_limiter": {"check_interval": "1s", "limit_mib": 400}, "batch": {}, "tail_sampling": block},
        "exporters": {"otlp/backend": {
            "endpoint": sink, "tls": {"insecure": True}, "headers": {"x-tenant": "shop"},
            "sending_queue": {"queue_size": 500, "num_consumers": 2},
            "retry_on_failure": {"enabled": True, "initial_interval": "100ms", "max_interval": "1s", "multiplier": 2},
        }},
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"metrics": {"address": f"127.0.0.1:{free_port_block(1)}"}, "logs": {"level": "info"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "tail_sampling", "batch"],
                                     "exporters": ["otlp/backend"]}},
        },
    }
    for path, value in changes.items():
        target = config
        *parents, last = path.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return config


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        read(config, "otelcol.yaml")
    return str(info.value).splitlines()


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_collector_config_runs_as_it_is(agent_process: Any, otlp_grpc_sink: GrpcSink, transport: str) -> None:
    agent = await asyncio.to_thread(agent_process(collector_config(otlp_grpc_sink.endpoint)).start)
    client = SdkClient(transport, agent.grpc_endpoint if transport == "grpc" else agent.http_endpoint)
    with client.tracer.start_as_current_span("GET /orders") as root:
        with client.tracer.start_as_current_span("db-query"):
            pass
    trace_id = f"{root.get_span_context().trace_id:032x}"
    await asyncio.to_thread(client.flush)
    await eventually(lambda: len(otlp_grpc_sink.spans_by_trace().get(trace_id, [])) == 2, timeout=15, message="the kept trace arrives")
    assert otlp_grpc_sink.headers[-1]["x-tenant"] == "shop"
    assert (await asyncio.to_thread(agent.stats))["traces"]["by_policy"]["test-policy-1"]["kept"] == 1
    log = agent.log()
    assert "not run: " in log and "processors.batch" in log and "processors.memory_limiter" in log
    client.shutdown()


def test_other_pipelines_are_named_and_left_out() -> None:
    config = collector_config("127.0.0.1:4317", **{
        "receivers.prometheus": {"config": {}},
        "exporters.prometheus": {"endpoint": "0.0.0.0:8889"},
        "service.pipelines.metrics": {"receivers": ["prometheus"], "exporters": ["prometheus"]},
    })
    loaded = read(config, "otelcol.yaml")
    assert "otelcol.yaml: service.pipelines.metrics: tailsampler runs traces only; this pipeline is not run" in loaded.warnings
    assert [e.name for e in loaded.config.exporters] == ["otlp/backend"]
    exporter = loaded.config.exporters[0]
    assert (exporter.endpoint, exporter.insecure, exporter.queue_size, exporter.num_consumers) == ("127.0.0.1:4317", True, 500, 2)
    assert loaded.config.receivers.otlp.http.max_request_body_size_mib == 10
    assert loaded.config.tail_sampling.num_traces == 100


def test_named_components_and_our_own_settings() -> None:
    config = collector_config("127.0.0.1:4317")
    config["processors"]["tail_sampling/edge"] = config["processors"].pop("tail_sampling")
    config["service"]["pipelines"]["traces/edge"] = config["service"]["pipelines"].pop("traces")
    config["service"]["pipelines"]["traces/edge"]["processors"] = ["tail_sampling/edge"]
    config["tailsampler"] = {"buffer": {"type": "redis", "url": "redis://cache:6379/0", "shards": 4}}
    loaded = read(config, "otelcol.yaml")
    assert (loaded.config.buffer.type, loaded.config.buffer.shards) == ("redis", 4)
    assert len(loaded.config.tail_sampling.policies) == 16


def test_what_changes_the_data_flow_is_refused_by_name() -> None:
    config = collector_config("127.0.0.1:4317", **{
        "receivers.jaeger": {"protocols": {"grpc": {}}},
        "processors.attributes/scrub": {"actions": [{"key": "user.email", "action": "delete"}]},
        "exporters.kafka": {"brokers": ["kafka:9092"]},
    })
    config["service"]["pipelines"]["traces"] = {
        "receivers": ["otlp", "jaeger"], "processors": ["attributes/scrub", "tail_sampling"], "exporters": ["otlp/backend", "kafka"],
    }
    assert problems(config) == [
        "otelcol.yaml: service.pipelines.traces.receivers: receiver 'jaeger': only the otlp receiver runs here; "
        "send OTLP instead, or run it in a Collector in front",
        "otelcol.yaml: service.pipelines.traces.processors: processor 'attributes/scrub' changes the data and cannot run here; "
        "run it in a Collector before or after tailsampler",
        "otelcol.yaml: service.pipelines.traces.exporters: exporter 'kafka': its type is not one that runs here "
        "(debug, file, otlp, otlphttp)",
    ]


def test_problems_of_the_translated_parts_name_the_collector_configs_keys() -> None:
    config = collector_config("127.0.0.1:4317")
    backend = config["exporters"]["otlp/backend"]
    backend["timeout"] = "soon"
    backend["compression"] = "zstd"
    backend["sending_queue"]["storage"] = "file_storage"
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = "nowhere"
    config["processors"]["tail_sampling"]["policies"][1]["latency"]["threshold_ms"] = "slow"
    assert problems(config) == [
        "otelcol.yaml: exporters.otlp/backend.compression: compression 'zstd' is not supported here; use gzip or none",
        "otelcol.yaml: exporters.otlp/backend.sending_queue.storage: not supported here",
        "otelcol.yaml: receivers.otlp.protocols.grpc.endpoint: expected host:port, got 'nowhere'",
        "otelcol.yaml: processors.tail_sampling.policies[1].latency.threshold_ms: Expected `int`, got `str`",
        "otelcol.yaml: exporters.otlp/backend.timeout: expected a duration such as 10s, 500ms or 1m, got 'soon'",
    ]


def test_two_traces_pipelines_need_a_choice() -> None:
    config = collector_config("127.0.0.1:4317")
    config["service"]["pipelines"]["traces/other"] = copy.deepcopy(config["service"]["pipelines"]["traces"])
    assert problems(config) == [
        "otelcol.yaml: service.pipelines: 2 traces pipelines (traces, traces/other): name the one to run in tailsampler.pipeline",
    ]
    config["tailsampler"] = {"pipeline": "traces/other"}
    assert "otelcol.yaml: service.pipelines.traces: not run: tailsampler.pipeline names traces/other" in read(config, "otelcol.yaml").warnings


def test_validate_says_it_is_a_collector_config_and_write_keeps_receivers_and_exporters(tmp_path: Path) -> None:
    path, out = tmp_path / "otelcol.yaml", tmp_path / "tailsampler.yaml"
    path.write_text(yaml.safe_dump(collector_config("127.0.0.1:4317")))
    cli = [sys.executable, "-m", "tailsampler.collector.cli", "validate"]
    plain = subprocess.run([*cli, str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert "an OpenTelemetry Collector config" in plain.stdout and "--write" in plain.stdout
    assert "not run: " in plain.stderr
    written = subprocess.run([*cli, "--otel-collector-config", str(path), "--write", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert written.returncode == 0, written.stderr
    native = yaml.safe_load(out.read_text())
    assert native["exporters"][0]["name"] == "otlp/backend" and native["exporters"][0]["endpoint"] == "127.0.0.1:4317"
    assert native["receivers"]["otlp"]["grpc"]["endpoint"].startswith("127.0.0.1:")
    rerun = subprocess.run([*cli, str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert rerun.returncode == 0 and rerun.stdout.strip() == f"{out}: ok", rerun.stderr
