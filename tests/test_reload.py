"""Live config changes: a real ``serve`` process under SDK traffic takes over new policies and
exporters between two decision rounds, refuses a broken file without changing anything, and
never stops serving; and the parts of a reload, in process."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.trace import Status, StatusCode

from tailsampler.collector.app import Collector
from tailsampler.collector.config import config_hash, load_config, parse_config
from tailsampler.storage import list_traces
from tests.collectors import AgentProcess, collector_config
from tests.otlp_sink import GrpcSink
from tests.sdk import SdkClient
from tests.waiting import eventually

ERRORS_ONLY = [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}]
EVERYTHING = [{"name": "all", "type": "always_sample"}]
SPANS_PER_TRACE = 3
DECISION_WAIT = 1.0


@dataclass
class Sent:
    trace_id: str
    error: bool
    started: float  # time.monotonic() when its first span began


@dataclass
class Traffic:
    """SDK traces sent from a thread until stopped: a root with two children, every third with
    an error, about 40 a second."""

    client: SdkClient
    sent: list[Sent] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            error = i % 3 == 0
            with self.client.tracer.start_as_current_span("GET /cart") as root:
                for n in range(SPANS_PER_TRACE - 1):
                    with self.client.tracer.start_as_current_span(f"db {n}") as child:
                        if error and n == 0:
                            child.set_status(Status(StatusCode.ERROR, "boom"))
            self.sent.append(Sent(f"{root.get_span_context().trace_id:032x}", error, started))
            i += 1
            time.sleep(0.025)


@dataclass
class Liveness:
    """Polls /health every 50 ms from a thread; any failed poll is recorded."""

    admin: str
    failures: list[str] = field(default_factory=list)
    polls: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with urllib.request.urlopen(f"http://{self.admin}/health", timeout=2) as response:
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
            except OSError as exc:
                self.failures.append(str(exc))
            self.polls += 1
            time.sleep(0.05)


def post_reload(agent: AgentProcess) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{agent.admin_endpoint}/api/v1/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def write(agent: AgentProcess, config: dict[str, Any]) -> str:
    agent.config_path.write_text(yaml.safe_dump(config))
    return config_hash(load_config(agent.config_path), str(agent.config_path))


async def test_policies_and_exporters_change_under_traffic_and_a_broken_file_changes_nothing(
    agent_process: Any, otlp_grpc_sink: GrpcSink, tmp_path: Path
) -> None:
    db = str(tmp_path / "kept.db")
    config_a = collector_config(
        [{"type": "sqlite", "path": db}], {"decision_wait": f"{DECISION_WAIT}s", "policies": ERRORS_ONLY}, ports=True
    )
    agent = agent_process(config_a)
    await asyncio.to_thread(agent.start)
    pid = agent.process.pid
    hash_a = agent.stats()["config"]["hash"]
    traffic = Traffic(SdkClient("grpc", agent.grpc_endpoint))
    liveness = Liveness(agent.admin_endpoint)
    threads = [threading.Thread(target=traffic.run), threading.Thread(target=liveness.run)]
    for thread in threads:
        thread.start()
    try:
        # phase A, errors only: until enough traces were sent long enough before any reload to be
        # decided under these policies
        await eventually(lambda: sum(t.started < time.monotonic() - DECISION_WAIT - 1.5 for t in traffic.sent) > 30,
                         30, "phase A traffic decided before the reload")

        config_b = copy.deepcopy(config_a)
        config_b["tail_sampling"]["policies"] = EVERYTHING
        config_b["exporters"].append({"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True})
        hash_b = await asyncio.to_thread(write, agent, config_b)
        reload_sent = time.monotonic()
        agent.signal(signal.SIGHUP)
        await eventually(lambda: agent.stats()["config"]["hash"] == hash_b, 10, "SIGHUP applied the new config")
        reloaded = time.monotonic()
        # phase B, everything, into the SQLite store and the sink
        await eventually(lambda: sum(t.started >= reloaded for t in traffic.sent) > 70, 30, "phase B traffic")

        broken = copy.deepcopy(config_b)
        broken["tail_sampling"]["policies"] = [{"name": "slow", "type": "latency", "latency": {"threshold_ms": "soon"}}]
        broken["buffer"]["colour"] = "blue"
        await asyncio.to_thread(write_raw, agent, broken)
        status, answer = await asyncio.to_thread(post_reload, agent)
        assert status == 400 and answer["result"] == "rejected" and answer["config_hash"] == hash_b
        problems = "\n".join(answer["problems"])
        assert len(answer["problems"]) == 2
        for key in ("tail_sampling.policies[0].latency.threshold_ms", "buffer: Object contains unknown field `colour`"):
            assert f"{agent.config_path}: {key}" in problems, f"{key} missing from the problems: {problems}"
        agent.signal(signal.SIGHUP)
        await eventually(lambda: agent.stats()["config"]["reloads"] == {"applied": 1, "rejected": 2}, 10)
        assert agent.stats()["config"]["hash"] == hash_b
        # phase C: the broken file changed nothing
        rejected = time.monotonic()
        await eventually(lambda: sum(t.started >= rejected for t in traffic.sent) > 40 and liveness.polls > 110, 30,
                         "phase C traffic")
    finally:
        traffic.stopping.set()
        threads[0].join()
    await asyncio.to_thread(traffic.client.flush)
    sent = traffic.sent

    def all_decided() -> bool:
        traces = agent.stats()["traces"]
        return traces["kept"] + traces["dropped"] == len(sent)

    await eventually(all_decided, 20, "every trace sent is decided, once")
    liveness.stopping.set()
    threads[1].join()

    stored = {row["trace_id"]: row for row in list_traces(db, limit=100_000)}
    sure_a = [t for t in sent if t.started < reload_sent - DECISION_WAIT - 1.5]
    sure_b = [t for t in sent if t.started >= reloaded]
    assert len(sure_a) > 20 and len(sure_b) > 60
    for trace in sure_a:
        assert (trace.trace_id in stored) == trace.error, "phase A keeps the errors only"
        if trace.error:
            assert stored[trace.trace_id]["policy"] == "errors"
    for trace in sure_b:
        assert stored[trace.trace_id]["policy"] == "all", "phases B and C keep everything"
    for trace in sent:  # whichever policies decided it, it was decided whole by one of them
        row = stored.get(trace.trace_id)
        assert row is not None or not trace.error, "an error trace is kept in every phase"
        if row is not None:
            assert row["policy"] in ("errors", "all") and row["span_count"] == SPANS_PER_TRACE
    await otlp_grpc_sink.wait_for(lambda: all(t.trace_id in otlp_grpc_sink.spans_by_trace() for t in sure_b), 10)
    received = otlp_grpc_sink.spans_by_trace()
    assert all(len(received[t.trace_id]) == SPANS_PER_TRACE for t in sure_b), "the added exporter gets them whole"
    assert not {t.trace_id for t in sure_a} & received.keys(), "the added exporter saw nothing decided before it"

    assert liveness.polls > 100 and liveness.failures == [], "the process answered throughout"
    assert agent.process.poll() is None and agent.process.pid == pid
    assert agent.stats()["config"]["hash"] != hash_a
    log = agent.log()
    assert "config reloaded from" in log and "config reload rejected, nothing changed (2 problem(s))" in log
    traffic.client.shutdown()


def write_raw(agent: AgentProcess, config: dict[str, Any]) -> None:
    agent.config_path.write_text(yaml.safe_dump(config))


async def in_process(directory: Path, config: dict[str, Any]) -> tuple[Collector, Path]:
    """A collector started from a config file, as ``serve`` starts one, so that it can reload."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    collector = Collector(load_config(path), source=str(path))
    await collector.start()
    return collector, path


async def test_a_change_that_needs_a_restart_is_refused_naming_each_key(tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    collector, path = await in_process(tmp_path, config)
    try:
        changed = copy.deepcopy(config)
        changed["buffer"] = {"type": "redis", "url": "redis://user:secret@127.0.0.1:6390/0"}
        changed["admin"]["endpoint"] = "127.0.0.1:1"
        changed["tail_sampling"]["policies"] = EVERYTHING  # live, but the file is refused whole
        path.write_text(yaml.safe_dump(changed))
        outcome = await collector.reload()
        assert outcome is not None and outcome.result == "rejected"
        text = "\n".join(outcome.problems)
        for key in ("buffer.type", "buffer.url", "admin.endpoint"):
            assert f"{path}: {key}: changing it needs a restart" in text
        assert "secret" not in text
        assert [p.name for p in collector.loop.engine.policies] == ["errors"]
        value = collector.metrics.registry.get_sample_value
        assert value("tailsampler_config_reloads_total", {"result": "rejected"}) == 1
        assert value("tailsampler_config_info", {"hash": collector.config_hash}) == 1
    finally:
        await collector.stop()


async def test_the_write_ahead_log_changes_only_with_a_restart(tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}], buffer={"wal": {"dir": str(tmp_path / "wal")}})
    collector, path = await in_process(tmp_path, config)
    try:
        for wal in ({"dir": str(tmp_path / "wal"), "fsync": "always"}, {"dir": str(tmp_path / "elsewhere")}, None):
            changed = copy.deepcopy(config)
            changed["buffer"]["wal"] = wal
            changed["tail_sampling"]["policies"] = EVERYTHING
            path.write_text(yaml.safe_dump(changed))
            outcome = await collector.reload()
            assert outcome is not None and outcome.result == "rejected"
            assert any(p.startswith(f"{path}: buffer.wal") and "changing it needs a restart" in p for p in outcome.problems)
        assert [p.name for p in collector.loop.engine.policies] == ["errors"]
        assert collector.config.buffer.wal is not None and collector.config.buffer.wal.fsync == "interval"
    finally:
        await collector.stop()


async def test_an_exporter_that_cannot_open_is_refused_before_anything_changes(tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    collector, path = await in_process(tmp_path, config)
    try:
        changed = copy.deepcopy(config)
        changed["exporters"].append({"type": "otlp", "endpoint": "127.0.0.1:1", "ca_file": str(tmp_path / "missing.pem")})
        changed["tail_sampling"]["policies"] = EVERYTHING
        path.write_text(yaml.safe_dump(changed))
        outcome = await collector.reload()
        assert outcome is not None and outcome.result == "rejected" and "missing" in outcome.problems[0]
        assert [e.name for e in collector.exporters] == ["file"]
        assert [p.name for p in collector.loop.engine.policies] == ["errors"]
    finally:
        await collector.stop()


async def test_a_removed_exporter_delivers_what_it_holds_or_reports_it(
    tmp_path: Path, otlp_grpc_sink: GrpcSink
) -> None:
    """A backend that refuses everything holds kept traces in its exporter's queue; a reload that
    removes the exporter gives them up, counted, and the traces settle with the exporter left."""
    kept = tmp_path / "kept.jsonl"
    down = {
        "type": "otlp", "name": "down", "endpoint": otlp_grpc_sink.endpoint, "insecure": True,
        "retry_on_failure": {"initial_interval": "50ms", "max_interval": "100ms", "max_elapsed_time": "0"},
    }
    config = collector_config(
        [{"type": "file", "path": str(kept)}, down],
        {"decision_wait": "200ms", "policies": EVERYTHING},
        service={"shutdown_timeout": "1s"},
    )
    otlp_grpc_sink.fail("UNAVAILABLE", times=10_000)
    collector, path = await in_process(tmp_path, config)
    try:
        client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
        for _ in range(5):
            with client.tracer.start_as_current_span("GET /"):
                pass
        await asyncio.to_thread(client.flush)
        value = collector.metrics.registry.get_sample_value
        await eventually(lambda: kept.exists() and len(kept.read_text().splitlines()) == 5, 10)
        assert (await collector.buffer.occupancy()).traces == 5, "kept traces wait for every exporter"

        del config["exporters"][1]
        path.write_text(yaml.safe_dump(config))
        outcome = await collector.reload()
        assert outcome is not None and outcome.result == "applied" and outcome.changed == ["exporters"]
        await eventually(lambda: value("tailsampler_exporter_traces_failed_total", {"exporter": "down", "reason": "removed"}) == 5, 10)
        await eventually(lambda: _settled(collector), 10, "the traces settle once the removed exporter gave them up")
        assert len(kept.read_text().splitlines()) == 5
        assert value("tailsampler_exporter_queue_traces", {"exporter": "down"}) is None, "its gauges are gone"
        client.shutdown()
    finally:
        await collector.stop()


async def _settled(collector: Collector) -> bool:
    return (await collector.buffer.occupancy()).traces == 0


async def test_decision_cache_sizes_change_live(tmp_path: Path) -> None:
    from tests.otlp_data import fragments, new_trace_id

    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    collector, path = await in_process(tmp_path, config)
    try:
        dropped = new_trace_id()
        await collector.buffer.append(fragments(dropped), time.time())
        await collector.loop.decide(await collector.buffer.claim_due(time.time(), 10, draining=True))
        result = await collector.buffer.append(fragments(dropped), time.time())
        assert result.late_dropped_spans == 1, "the dropped decision is remembered"

        config["tail_sampling"]["decision_cache"] = {"non_sampled_cache_size": 0}
        path.write_text(yaml.safe_dump(config))
        outcome = await collector.reload()
        assert outcome is not None and outcome.changed == ["tail_sampling.decision_cache.non_sampled_cache_size"]
        result = await collector.buffer.append(fragments(dropped), time.time())
        assert result.late_dropped_spans == 0 and (await collector.buffer.occupancy()).traces == 1, "forgotten"
    finally:
        await collector.stop()


async def test_a_fleet_running_mixed_configs_shows_each_agents_hash(tmp_path: Path, clean_redis_url: str) -> None:
    buffer = {"type": "redis", "url": clean_redis_url, "key_prefix": f"mixed{time.time_ns()}"}
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}], buffer=buffer)
    one, _ = await in_process(tmp_path / "one", config)
    two, path_two = await in_process(tmp_path / "two", config)
    try:
        same = one.config_hash
        assert two.config_hash == same

        async def configs() -> dict[str, list[str]]:
            return (await one.stats())["fleet"]["configs"]

        await eventually(lambda: _agents(configs, {same: 2}), 10)
        changed = copy.deepcopy(config)
        changed["tail_sampling"]["policies"] = EVERYTHING
        path_two.write_text(yaml.safe_dump(changed))
        outcome = await two.reload()
        assert outcome is not None and outcome.result == "applied"
        await two.stats()  # publishes its new hash
        await eventually(lambda: _agents(configs, {same: 1, two.config_hash: 1}), 10)
    finally:
        await one.stop()
        await two.stop()


async def _agents(configs: Any, expected: dict[str, int]) -> bool:
    return {h: len(agents) for h, agents in (await configs()).items()} == expected


def test_the_config_hash_is_of_the_file_as_written(tmp_path: Path) -> None:
    """Agents given one file show one hash, and what the file leaves to the environment (a
    password) never enters it; a config given in code is hashed as decoded."""
    text = "tail_sampling: {policies: [{name: all, type: always_sample}]}\n"
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(text)
    two.write_text(text)
    assert config_hash(load_config(one), str(one)) == config_hash(load_config(two), str(two))
    two.write_text("# the same policies\n" + text)
    assert config_hash(load_config(one), str(one)) != config_hash(load_config(two), str(two))
    spread = "tail_sampling:\n  policies:\n    - name: all\n      type: always_sample\n"
    assert config_hash(parse_config(text)) == config_hash(parse_config(spread))


async def test_an_exporter_changed_under_its_name_is_replaced_and_keeps_its_gauges(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = collector_config([{"type": "file", "name": "archive", "path": str(first)}],
                              {"decision_wait": "100ms", "policies": EVERYTHING})
    collector, path = await in_process(tmp_path, config)
    try:
        client = SdkClient("http", f"127.0.0.1:{collector.http.port}")

        async def one_trace_into(file: Path, lines: int) -> None:
            with client.tracer.start_as_current_span("GET /"):
                pass
            await asyncio.to_thread(client.flush)
            await eventually(lambda: file.exists() and len(file.read_text().splitlines()) == lines, 10)

        await one_trace_into(first, 1)
        config["exporters"][0]["path"] = str(second)
        path.write_text(yaml.safe_dump(config))
        outcome = await collector.reload()
        assert outcome is not None and outcome.changed == ["exporters"]
        await one_trace_into(second, 1)
        assert len(first.read_text().splitlines()) == 1
        value = collector.metrics.registry.get_sample_value
        assert value("tailsampler_exporter_queue_capacity", {"exporter": "archive"}) == 1000
        assert value("tailsampler_exporter_circuit_state", {"exporter": "archive"}) == 0
        client.shutdown()
    finally:
        await collector.stop()


def test_exporters_keep_their_names_when_some_of_a_list_change() -> None:
    from prometheus_client import CollectorRegistry

    from tailsampler.collector.reload import plan_exporters
    from tailsampler.storage import build_exporters, exporter_names

    def specs(*endpoints: str) -> Any:
        return parse_config(yaml.safe_dump({
            "tail_sampling": {"policies": EVERYTHING},
            "exporters": [{"type": "otlp", "endpoint": e} for e in endpoints],
        })).exporters

    registry = CollectorRegistry()
    before = specs("a:1", "b:1")
    running = dict(zip(exporter_names(before), zip(before, build_exporters(before, registry))))
    after = specs("a:1", "c:1", "d:1")
    plan = plan_exporters(running, after, exporter_names(after), lambda s, n: build_exporters(s, registry, n))
    assert [e.name for e in plan.exporters] == ["otlp/0", "otlp/1", "otlp/2"]
    assert plan.exporters[0] is running["otlp/0"][1], "an unchanged exporter keeps running"
    assert [e.name for e in plan.new] == ["otlp/1", "otlp/2"]
    assert plan.replaced == [running["otlp/1"][1]] and plan.removed == []
