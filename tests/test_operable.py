"""What an SRE reads: one line when Redis or a backend goes away and one when it is back (never a
traceback per tick), one startup summary without secrets, JSON logs, ``--version``, a config that
cannot work refused and one that keeps nothing warned about, and no ``_created`` series."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry import trace

from tailsampler.collector.summary import version
from tailsampler.common.incident import Incident
from tests.collectors import REPO, StartCollector, collector_config
from tests.otlp_sink import GrpcSink
from tests.redis_servers import RedisProcess
from tests.sdk import SdkClient
from tests.waiting import eventually, wait_until


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tailsampler.collector.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_incident_is_one_warning_a_reminder_a_minute_and_one_line_when_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    incident = Incident(logging.getLogger("t"), "redis buffer 10.0.0.5:6379", remind_every=60, clock=clock)
    incident.resolved()  # nothing was wrong: nothing to say
    for second in range(0, 150):
        clock.now = float(second)
        incident.failed("connection refused")
    clock.now = 151.0
    incident.resolved()
    incident.resolved()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "redis buffer 10.0.0.5:6379: connection refused",
        "redis buffer 10.0.0.5:6379: still failing after 1m00s (61 failures); latest: connection refused",
        "redis buffer 10.0.0.5:6379: still failing after 2m00s (121 failures); latest: connection refused",
        "redis buffer 10.0.0.5:6379: recovered after 2m31s (150 failures)",
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3 + ["INFO"]


def test_redis_going_away_is_one_warning_and_coming_back_one_line(agent_process: Any, fresh_redis: RedisProcess, tmp_path: Path) -> None:
    config = collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        buffer={"type": "redis", "url": fresh_redis.url, "tick": "20ms", "timeout": "200ms", "lease": "2s"},
        ports=True,
    )
    agent = agent_process(config).start()
    fresh_redis.pause()
    try:
        wait_until(lambda: agent.admin_get("/health/ready")[0] == 503, 10, "not ready while Redis is away")
        # decision rounds, renewals and stats every tick, each waiting out the 200 ms timeout
        wait_until(lambda: _metric(agent.admin_endpoint, "tailsampler_redis_unavailable_total") >= 30, 30)
    finally:
        fresh_redis.resume()
    wait_until(lambda: agent.admin_get("/health/ready")[0] == 200, 15, "ready again")
    wait_until(lambda: "recovered after" in agent.log(), 10)
    agent.stop()
    log = agent.log()
    assert "Traceback" not in log
    assert log.count(f"redis buffer 127.0.0.1:{fresh_redis.port}: unavailable") == 1, log
    assert log.count(f"redis buffer 127.0.0.1:{fresh_redis.port}: recovered after") == 1, log
    assert len(log.splitlines()) < 20, log


async def test_a_backend_going_away_is_one_warning_and_coming_back_one_line(
    start_collector: StartCollector, otlp_grpc_sink: GrpcSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailsampler")
    collector = await start_collector(collector_config(
        [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True, "batch_max_traces": 1,
          "retry_on_failure": {"initial_interval": "10ms", "max_interval": "20ms"},
          "circuit_breaker": {"failure_threshold": 2, "cooldown": "100ms"}}],
        {"decision_wait": "100ms", "policies": [{"name": "all", "type": "always_sample"}]},
    ))
    otlp_grpc_sink.fail("UNAVAILABLE", times=40)
    client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
    for _ in range(5):
        with client.tracer.start_as_current_span("GET /"):
            pass
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.spans_by_trace()) == 5, 30)
    await eventually(lambda: "exporter otlp: recovered after" in caplog.text, 10)
    assert otlp_grpc_sink.attempts > 20, "the circuit opened and closed several times"
    lines = [r.getMessage() for r in caplog.records if r.name == "tailsampler.storage"]
    assert len([m for m in lines if m.startswith("exporter otlp: circuit open")]) == 1, lines
    assert len([m for m in lines if m.startswith("exporter otlp: recovered after")]) == 1, lines
    assert not any(r.exc_info for r in caplog.records)
    client.shutdown()


def _metric(admin: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_startup_is_one_summary_in_json_without_secrets(agent_process: Any, fresh_redis: RedisProcess, tmp_path: Path) -> None:
    fresh_redis.client.execute_command("ACL", "SETUSER", "agent", "on", ">s3cret-pass", "~*", "&*", "+@all")
    url = f"redis://agent:s3cret-pass@127.0.0.1:{fresh_redis.port}/0"
    config = collector_config(
        [{"type": "otlphttp", "endpoint": "http://user:hunter2@127.0.0.1:1", "headers": {"api-key": "k-123"}},
         {"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        {"policies": [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
                      {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 1}}],
         "overload": {}},
        buffer={"type": "redis", "url": url},
        ports=True,
        service={"log_format": "json", "shutdown_timeout": "5s"},
    )
    agent = agent_process(config).start()
    agent.stop()
    entries = [json.loads(line) for line in agent.log().splitlines()]
    [summary] = [e for e in entries if e["message"].startswith("tailsampler ")]
    assert summary["level"] == "info" and summary["time"].endswith("Z")
    assert summary["version"] == version() and summary["config_file"] == str(agent.config_path)
    assert summary["listeners"]["otlp/grpc"] == {"address": agent.grpc_endpoint, "tls": "plaintext", "auth": "no auth"}
    assert set(summary["listeners"]) == {"otlp/grpc", "otlp/http", "admin"}
    assert summary["buffer"]["type"] == "redis" and summary["buffer"]["url"] == f"redis://127.0.0.1:{fresh_redis.port}/0"
    assert summary["buffer"]["num_traces"] == 50000
    assert [p["name"] for p in summary["policies"]] == ["errors", "baseline"]
    assert summary["exporters"][0] == {"name": "otlphttp", "type": "otlphttp", "target": "http://127.0.0.1:1/v1/traces"}
    assert summary["overload_relief"] == {"activate_at": 90.0, "deactivate_at": 75.0, "sampling_percentage": 10.0}
    for secret in ("s3cret-pass", "hunter2", "k-123"):
        assert secret not in agent.log()


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tailsampler {version()}"


def test_a_config_without_policies_is_refused_and_one_that_keeps_nothing_is_warned_about(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("tail_sampling: {decision_wait: 5s}\n")
    for command in (("validate", str(empty)), ("serve", "--config", str(empty))):
        result = _cli(*command)
        assert result.returncode != 0
        assert f"{empty}: tail_sampling.policies: at least one policy is required" in result.stderr
    otelcol = tmp_path / "otelcol.yaml"
    otelcol.write_text("processors:\n  tail_sampling: {decision_wait: 5s}\n")
    result = _cli("validate", "--otel-collector-config", str(otelcol))
    assert result.returncode == 1 and "processors.tail_sampling.policies: at least one policy is required" in result.stderr

    nothing = tmp_path / "nothing.yaml"
    nothing.write_text(yaml.safe_dump({"tail_sampling": {"policies": [
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "no-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "any", "type": "not", "not": {"not_sub_policy": {"name": "none", "type": "probabilistic",
                                                                     "probabilistic": {"sampling_percentage": 0}}}}]}},
    ]}}))
    result = _cli("validate", str(nothing))
    assert result.returncode == 0
    assert f"{nothing}: warning: tail_sampling.policies: no trace can ever be kept: policy 'no-health' drops every trace" in result.stderr
    zero = tmp_path / "zero.yaml"
    zero.write_text("tail_sampling: {policies: [{name: p, type: probabilistic, probabilistic: {sampling_percentage: 0}}]}\n")
    assert "no trace can ever be kept" in _cli("validate", str(zero)).stderr
    assert "warning" not in _cli("validate", str(REPO / "examples" / "local.yaml")).stderr


async def test_metrics_carry_no_created_series(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(collector_config([{"type": "sqlite", "path": str(tmp_path / "k.db")}]))
    client = SdkClient("http", f"127.0.0.1:{collector.http.port}")
    with client.tracer.start_as_current_span("GET /"):
        pass
    await asyncio.to_thread(client.flush)
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{collector.admin.port}/metrics", timeout=5).read().decode()
    )
    assert "tailsampler_requests_total" in text and "tailsampler_exporter_queue_traces" in text
    assert "_created" not in text
    client.shutdown()


@pytest.mark.parametrize(("switch", "core"), [("0", "c"), ("1", "python")])
async def test_the_wire_core_that_runs_is_in_the_startup_line_and_the_stats_and_samples_alike(
    agent_process: Any, otlp_grpc_sink: GrpcSink, switch: str, core: str
) -> None:
    config = collector_config(
        [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True}],
        {"decision_wait": "300ms", "policies": [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "checkout", "type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/checkout"]}},
        ]},
        ports=True,
    )
    agent = agent_process(config).start(env={"TAILSAMPLER_NO_EXTENSIONS": switch})
    client = SdkClient("grpc", agent.grpc_endpoint)
    kept = []
    for route, failing in (("/checkout", False), ("/health", True), ("/health", False)):
        with client.tracer.start_as_current_span(f"GET {route}", attributes={"http.route": route}) as span:
            with client.tracer.start_as_current_span("SELECT"):
                pass
            if failing:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            if route == "/checkout" or failing:
                kept.append(format(span.get_span_context().trace_id, "032x"))
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.spans_by_trace()) == 2, 20, "the two kept traces")
    assert sorted(otlp_grpc_sink.spans_by_trace()) == sorted(kept)
    assert all(len(spans) == 2 for spans in otlp_grpc_sink.spans_by_trace().values())
    assert agent.stats()["agent"]["core"] == core
    client.shutdown()
    agent.stop()
    [line] = [line for line in agent.log().splitlines() if " started from " in line]
    assert f"({core} wire core) started from" in line
