"""The OpenTelemetry SDK's own exporters → tailsampler → a real OTLP receiver downstream."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
import pytest
from opentelemetry.trace import Status, StatusCode

from tailsampler.storage import list_traces
from tests.collectors import REPO, StartCollector, collector_config
from tests.waiting import eventually, wait_until
from tests.sdk import SdkClient, remote_parent

POLICIES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 200}},
]


def make_trace(client: SdkClient, *, error: bool = False, slow: bool = False, children: int = 3) -> str:
    """A root span with children, the way an instrumented request handler produces them."""
    start = time.time_ns()
    with client.tracer.start_as_current_span("GET /checkout", start_time=start, end_on_exit=False) as root:
        for i in range(children):
            with client.tracer.start_as_current_span(f"db-query {i}") as child:
                child.set_attribute("db.system", "postgresql")
                if error and i == children - 1:
                    child.set_status(Status(StatusCode.ERROR, "boom"))
        root.end(start + (500_000_000 if slow else 5_000_000))
        return f"{root.get_span_context().trace_id:032x}"


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_kept_traces_arrive_whole_and_unchanged_and_dropped_ones_never(
    transport: str, start_collector: StartCollector, otlp_grpc_sink: Any
) -> None:
    collector = await start_collector(
        collector_config(
            [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True}],
            tail_sampling={"decision_wait": "1s", "policies": POLICIES},
        )
    )
    endpoint = f"127.0.0.1:{collector.grpc.port if transport == 'grpc' else collector.http.port}"
    client = SdkClient(transport, endpoint)
    errors = [make_trace(client, error=True) for _ in range(3)]
    slow = [make_trace(client, slow=True) for _ in range(3)]
    for _ in range(10):
        make_trace(client)
    await asyncio.to_thread(client.flush)

    async def all_decided() -> bool:
        traces = (await collector.stats())["traces"]
        return traces["kept"] + traces["dropped"] == 16

    await eventually(all_decided, timeout=15)
    await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.spans_by_trace()) == 6, timeout=10)
    received = otlp_grpc_sink.spans_by_trace()
    assert set(received) == set(errors + slow)
    for trace_id in errors + slow:
        got = sorted(s.SerializeToString() for s in received[trace_id])
        sent = sorted(s.SerializeToString() for s in client.sent_as_otlp(trace_id))
        assert got == sent, f"trace {trace_id} changed on its way through"
    stats = await collector.stats()
    assert stats["traces"]["by_policy"]["errors"]["kept"] == 3
    assert stats["traces"]["by_policy"]["slow"]["kept"] == 3
    client.shutdown()


async def test_late_spans_follow_their_traces_decision(start_collector: StartCollector, otlp_grpc_sink: Any) -> None:
    collector = await start_collector(
        collector_config(
            [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True}],
            tail_sampling={"decision_wait": "500ms", "policies": POLICIES},
        )
    )
    client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
    kept, dropped = make_trace(client, error=True), make_trace(client)
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: kept in otlp_grpc_sink.spans_by_trace(), timeout=10)
    await eventually(lambda: _decided(collector, 2), timeout=10)

    for trace_id in (kept, dropped):
        with client.tracer.start_as_current_span("late retry", context=remote_parent(trace_id)):
            pass
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.spans_by_trace()[kept]) == 5, timeout=5)
    await eventually(lambda: _late(collector, "dropped", 1), timeout=5)
    assert dropped not in otlp_grpc_sink.spans_by_trace()
    assert (await collector.stats())["spans"]["late"] == {"kept": 1, "dropped": 1}
    client.shutdown()


async def _decided(collector: Any, count: int) -> bool:
    traces = (await collector.stats())["traces"]
    return traces["kept"] + traces["dropped"] == count


async def _late(collector: Any, decision: str, count: int) -> bool:
    return (await collector.stats())["spans"]["late"].get(decision) == count


async def test_root_span_decides_the_trace_within_about_a_second_not_thirty(
    start_collector: StartCollector, otlp_grpc_sink: Any
) -> None:
    collector = await start_collector(
        collector_config(
            [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True}],
            tail_sampling={"decision_wait": "30s", "decision_wait_after_root_received": "1s", "policies": POLICIES},
        )
    )
    client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
    trace_id = make_trace(client, error=True)
    await asyncio.to_thread(client.flush)
    sent_at = time.monotonic()
    await otlp_grpc_sink.wait_for(lambda: trace_id in otlp_grpc_sink.spans_by_trace(), timeout=10)
    assert time.monotonic() - sent_at < 5.0  # decision_wait is 30s
    assert len(otlp_grpc_sink.spans_by_trace()[trace_id]) == 4
    client.shutdown()


@pytest.mark.parametrize("drop", [False, True], ids=["decide", "drop_pending_traces_on_shutdown"])
def test_sigterm_settles_pending_traces_before_exiting(agent_process: Any, tmp_path: Path, drop: bool) -> None:
    """Pending traces are decided on what has arrived and reach the store, or are dropped when
    configured; either way the process exits 0."""
    db = tmp_path / "kept.db"
    tail_sampling = {"decision_wait": "60s", "drop_pending_traces_on_shutdown": drop, "policies": POLICIES}
    agent = agent_process(collector_config([{"type": "sqlite", "path": str(db)}], tail_sampling, ports=True)).start()
    client = SdkClient("grpc", agent.grpc_endpoint)
    errors = [make_trace(client, error=True) for _ in range(5)]
    for _ in range(5):
        make_trace(client)
    client.flush()
    wait_until(lambda: agent.stats()["buffer"]["traces"] == 10, timeout=10)
    assert agent.stats()["traces"]["kept"] == 0  # nothing is due for a minute

    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0, agent.log()
    stored = {row["trace_id"]: row for row in list_traces(str(db), limit=100)}
    if drop:
        assert "dropped 10 pending traces" in agent.log()
        assert stored == {}
    else:
        assert set(stored) == set(errors)
        assert all(row["span_count"] == 4 for row in stored.values())
    client.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tailsampler.collector.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_validate_accepts_the_example_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    # examples/secure.yaml takes its tokens from the environment and has no defaults for them
    monkeypatch.setenv("TAILSAMPLER_TOKEN", "example-token")
    monkeypatch.setenv("TAILSAMPLER_ADMIN_TOKEN", "example-admin-token")
    for example in [*sorted((REPO / "examples").glob("*.yaml")), REPO / "deploy" / "agent.yaml"]:
        result = _cli("validate", str(example))
        assert result.returncode == 0, result.stderr


def test_validate_names_the_file_the_key_path_and_what_was_expected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tail_sampling:\n  policies:\n"
        "    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n"
        "    - {name: slow, type: latency, latency: {threshold_ms: soon}}\n"
    )
    result = _cli("validate", str(bad))
    assert result.returncode != 0
    assert str(bad) in result.stderr
    assert "tail_sampling.policies[1].latency.threshold_ms" in result.stderr
    assert "int" in result.stderr


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("buffer: {type: memcached}\n")
    result = _cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: buffer.type" in result.stderr



async def test_admin_api_lists_and_shows_kept_traces_and_stats_cli_reads_it(
    start_collector: StartCollector, tmp_path: Path
) -> None:
    collector = await start_collector(
        collector_config(
            [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
            tail_sampling={"decision_wait": "300ms", "policies": POLICIES, "recording": {"policy_attribute": True}},
        )
    )
    client = SdkClient("http", f"127.0.0.1:{collector.http.port}")
    kept = make_trace(client, error=True)
    make_trace(client)
    await asyncio.to_thread(client.flush)
    await eventually(lambda: _decided(collector, 2), timeout=10)
    base = f"http://127.0.0.1:{collector.admin.port}"
    async with aiohttp.ClientSession() as session:

        async def stored() -> list[Any]:
            async with session.get(f"{base}/api/v1/traces?errors=true") as response:
                return (await response.json())["traces"]

        [row] = await eventually(stored, timeout=10)
        assert row["trace_id"] == kept and row["policy"] == "errors" and row["span_count"] == 4
        async with session.get(f"{base}/api/v1/traces/{kept}") as response:
            shown = await response.json()
        scope = shown["otlp"]["resourceSpans"][0]["scopeSpans"][0]
        assert {"key": "sampling.policy", "value": {"stringValue": "errors"}} in scope["scope"]["attributes"]
        assert all(span["traceId"] == kept for span in scope["spans"])
        async with session.get(f"{base}/api/v1/traces/{'0' * 31}1") as response:
            assert response.status == 404

    result = await asyncio.to_thread(_cli, "stats", "--admin", f"127.0.0.1:{collector.admin.port}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"traces kept\s+│\s+1\s+│.*│\s+1\s+│", result.stdout), result.stdout  # the window, since start
    assert "errors" in result.stdout
    client.shutdown()


def test_validate_checks_and_converts_an_opentelemetry_collector_config(tmp_path: Path) -> None:
    otelcol = tmp_path / "otelcol.yaml"
    otelcol.write_text(
        "receivers: {otlp: {protocols: {grpc: {}}}}\n"
        "processors:\n"
        "  batch: {}\n"
        "  tail_sampling/edge:\n"
        "    decision_wait: 5s\n"
        "    policies:\n"
        "      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n"
    )
    out = tmp_path / "tailsampler.yaml"
    result = _cli("validate", "--otel-collector-config", str(otelcol), "--write", str(out))
    assert result.returncode == 0, result.stderr
    assert _cli("validate", str(out)).returncode == 0

    otelcol.write_text(otelcol.read_text().replace("status_codes: [ERROR]", "status_codes: [BROKEN]"))
    result = _cli("validate", "--otel-collector-config", str(otelcol))
    assert result.returncode == 1
    assert "processors.tail_sampling/edge.policies[0]" in result.stderr


def test_validate_refuses_policies_that_decode_but_make_no_sense(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tail_sampling:\n  policies:\n"
        "    - {name: band, type: latency, latency: {threshold_ms: 500, upper_threshold_ms: 100}}\n"
    )
    result = _cli("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}: tail_sampling.policies[0].latency.upper_threshold_ms" in result.stderr


def test_serve_reports_an_exporter_it_cannot_set_up_and_exits(tmp_path: Path) -> None:
    config = collector_config([{"type": "otlp", "endpoint": "127.0.0.1:1", "ca_file": str(tmp_path / "missing.pem")}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "missing.pem" in result.stderr and "Traceback" not in result.stderr


def test_serve_reports_a_port_in_use_and_exits(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = collector_config([{"type": "sqlite", "path": str(tmp_path / "k.db")}])
        config["admin"]["endpoint"] = f"127.0.0.1:{busy.getsockname()[1]}"
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        result = _cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_validate_refuses_two_listeners_on_one_port(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: {otlp: {grpc: {endpoint: 0.0.0.0:4317}, http: {endpoint: 0.0.0.0:4317}}}\n")
    result = _cli("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}: receivers.otlp.http.endpoint: port 4317 is already used by receivers.otlp.grpc.endpoint" in result.stderr
