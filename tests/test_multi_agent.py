"""Three ``tailsampler serve`` agents sharing one buffer on a real 3-master Redis Cluster.

The OpenTelemetry SDK sends every trace's spans through all three agents (a root span to one, a
child span from a remote parent to each of the others), so no agent ever sees a whole trace.
Kept traces must arrive downstream whole and once; dropped traces never; an agent killed while
it holds claims, and a Redis that stops answering, must not lose a trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
import urllib.request
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import redis
from opentelemetry.trace import Status, StatusCode

from tailsampler.collector.wire import shard_of
from tests.collectors import AgentProcess, collector_config
from tests.otlp_sink import GrpcSink
from tests.redis_servers import RedisCluster
from tests.sdk import SdkClient, remote_parent
from tests.waiting import eventually

SHARDS = 16
PREFIX = "ts"
ERRORS = {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}


def agent_config(cluster: RedisCluster, exporter: dict[str, Any], policies: list[dict[str, Any]]) -> dict[str, Any]:
    return collector_config(
        exporters=[exporter],
        tail_sampling={"decision_wait": "1s", "policies": policies},
        buffer={
            "type": "redis", "url": cluster.url, "cluster": True, "shards": SHARDS, "key_prefix": PREFIX,
            "lease": "2s", "tick": "50ms", "timeout": "500ms",
        },
        ports=True,
    )


def sink_exporter(endpoint: str, **keys: Any) -> dict[str, Any]:
    return {"type": "otlp", "endpoint": endpoint, "insecure": True, "compression": "none", **keys}


@dataclass
class Fleet:
    agents: list[AgentProcess]
    clients: list[SdkClient]
    cluster: RedisCluster
    sink: GrpcSink

    def send(self, count: int, error: Callable[[int], bool]) -> dict[str, bool]:
        """``count`` traces, each with a root span through agent 0 and a child span through each
        other agent (the last one carries the error); returns trace ID hex -> has an error."""
        traces: dict[str, bool] = {}
        for i in range(count):
            with self.clients[0].tracer.start_as_current_span(f"GET /item/{i}") as root:
                trace_id = f"{root.get_span_context().trace_id:032x}"
            for client in self.clients[1:]:
                with client.tracer.start_as_current_span("child", context=remote_parent(trace_id)) as span:
                    if error(i) and client is self.clients[-1]:
                        span.set_status(Status(StatusCode.ERROR))
            traces[trace_id] = error(i)
        return traces

    async def flush(self) -> None:
        """Wait until the SDKs have delivered every span (retrying while the agents push back);
        in a thread, because the sink answers on this event loop."""
        await asyncio.gather(*(asyncio.to_thread(client.flush) for client in self.clients))

    def sent_span_ids(self, trace_id: str) -> list[bytes]:
        return sorted(span.span_id for client in self.clients for span in client.sent_as_otlp(trace_id))

    def decisions(self, trace_ids: list[str]) -> dict[str, bytes | None]:
        client = redis.RedisCluster.from_url(self.cluster.url)
        try:
            keys = [f"{PREFIX}:{{{shard_of(bytes.fromhex(t), SHARDS)}}}:s:{t}" for t in trace_ids]
            # a trace's key holds its verdict once decided ("1"/"0" first), its fragments before
            return {t: v if v and v[:1] in (b"0", b"1") else None for t, v in zip(trace_ids, client.mget_nonatomic(keys))}
        finally:
            client.close()

    async def all_decided(self, traces: dict[str, bool], timeout: float = 20.0) -> None:
        decided = await eventually(lambda: (d := self.decisions(list(traces))) and all(d.values()) and d, timeout)
        kept = {t for t, value in decided.items() if value.startswith(b"1")}
        assert kept == {t for t, error in traces.items() if error}, "only the traces with an error are kept"

    async def delivered_once(self, traces: dict[str, bool], timeout: float = 20.0) -> None:
        """Every kept trace arrives whole and each span once; no dropped trace arrives at all."""
        kept = [t for t, error in traces.items() if error]
        expected = {t: self.sent_span_ids(t) for t in kept}

        def missing() -> list[str]:
            got = self.sink.spans_by_trace()
            return [t for t, ids in expected.items() if len(got.get(t, ())) < len(ids)]

        try:
            await eventually(lambda: not missing(), timeout)
        except AssertionError:
            pytest.fail(f"{len(missing())} of {len(expected)} kept traces never reached the sink whole: {missing()[:5]}")
        got = self.sink.spans_by_trace()
        for trace_id, ids in expected.items():
            assert sorted(span.span_id for span in got[trace_id]) == ids, f"trace {trace_id} not delivered exactly once"
        dropped = {t for t, error in traces.items() if not error}
        assert not dropped & got.keys(), "a dropped trace reached the sink"

    def claimed(self) -> int:
        client = redis.RedisCluster.from_url(self.cluster.url)
        try:
            return sum(client.zcard(f"{PREFIX}:{{{n}}}:claims") for n in range(SHARDS))
        finally:
            client.close()

    def metric(self, agent: AgentProcess, name: str) -> float:
        with urllib.request.urlopen(f"http://{agent.admin_endpoint}/metrics", timeout=2) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


MakeFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def make_fleet(
    clean_redis_cluster: RedisCluster, otlp_grpc_sink: GrpcSink, agent_process: Callable[[dict[str, Any]], AgentProcess]
) -> AsyncIterator[MakeFleet]:
    """Start three agents (exporting to the sink unless told otherwise) and their SDK clients."""
    fleets: list[Fleet] = []

    async def make(policies: list[dict[str, Any]], exporters: list[dict[str, Any]] | None = None) -> Fleet:
        exporters = exporters or [sink_exporter(otlp_grpc_sink.endpoint)] * 3
        agents = [agent_process(agent_config(clean_redis_cluster, exporter, policies)) for exporter in exporters]
        await asyncio.gather(*(asyncio.to_thread(agent.start) for agent in agents))
        clients = [SdkClient("grpc", agent.grpc_endpoint, service=f"svc{i}") for i, agent in enumerate(agents)]
        fleets.append(Fleet(agents, clients, clean_redis_cluster, otlp_grpc_sink))
        return fleets[-1]

    yield make
    clean_redis_cluster.resume()
    for fleet in fleets:
        for client in fleet.clients:
            await asyncio.to_thread(client.shutdown)


async def test_spans_spread_over_three_agents_are_decided_once_and_delivered_whole(make_fleet: MakeFleet) -> None:
    fleet = await make_fleet([ERRORS])
    traces = fleet.send(40, error=lambda i: i % 3 == 0)
    await fleet.flush()
    await fleet.all_decided(traces)
    await fleet.delivered_once(traces)
    stats = [agent.stats() for agent in fleet.agents]
    assert sum(s["traces"]["kept"] + s["traces"]["dropped"] for s in stats) == len(traces), "a trace decided twice"
    assert (stats[0]["buffer"]["traces"], stats[0]["buffer"]["bytes"]) == (0, 0), "the buffer is shared: every agent sees it empty"

    def fleet_counts_every_trace() -> bool:
        view = fleet.agents[1].stats().get("fleet", {})
        return view.get("agents") == 3 and view["traces"]["kept"] + view["traces"]["dropped"] == len(traces)

    await eventually(fleet_counts_every_trace, timeout=15, message="fleet-wide stats add up every agent")
    printed = subprocess.run(
        [sys.executable, "-m", "tailsampler.collector.cli", "stats", "--admin", fleet.agents[2].admin_endpoint],
        capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "160"},
    )
    assert "fleet of 3 agent(s)" in printed.stdout
    kept = sum(s["traces"]["kept"] for s in stats)
    assert re.search(rf"traces kept\s+│.*│\s+{kept}\s+│", printed.stdout), printed.stdout  # since start


async def test_traces_claimed_by_a_killed_agent_are_decided_by_the_others(
    make_fleet: MakeFleet, otlp_grpc_sink: GrpcSink
) -> None:
    # the victim exports into a socket that never answers, with room for one trace: once it
    # has claimed a few kept traces its decision round stalls while it holds their claims
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    try:
        stalled = sink_exporter(f"127.0.0.1:{blackhole.getsockname()[1]}", queue_size=1, batch_max_traces=1, timeout="60s")
        healthy = sink_exporter(otlp_grpc_sink.endpoint)
        fleet = await make_fleet([ERRORS], exporters=[healthy, healthy, stalled])
        victim, survivors = fleet.agents[2], fleet.agents[:2]
        traces: dict[str, bool] = {}
        for _ in range(10):  # spread over a second, so every agent claims some as they fall due
            traces |= fleet.send(6, error=lambda i: i % 3 != 2)
            await asyncio.sleep(0.1)
        await fleet.flush()
        await eventually(lambda: fleet.metric(victim, "tailsampler_exporter_queue_traces") >= 1, 15)
        await eventually(lambda: fleet.claimed() > 0, 5)  # the others settle within milliseconds
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        await fleet.all_decided(traces)
        await fleet.delivered_once(traces)
        assert sum(fleet.metric(agent, "tailsampler_redis_reclaimed_traces_total") for agent in survivors) >= 1
    finally:
        blackhole.close()


async def test_a_stopped_redis_is_retried_by_the_sdk_and_nothing_is_lost(
    make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = await make_fleet([ERRORS])
    cluster = fleet.cluster
    before = fleet.send(10, error=lambda i: i % 2 == 0)
    await fleet.flush()
    caplog.set_level(logging.WARNING, logger="opentelemetry.exporter.otlp.proto.grpc.exporter")
    cluster.pause()
    try:
        during = fleet.send(10, error=lambda i: i % 2 == 1)
        flushing = asyncio.ensure_future(fleet.flush())
        await eventually(lambda: all(a.admin_get("/health/ready")[0] == 503 for a in fleet.agents), 10)
        # what the SDK saw: a retryable answer, and it keeps the spans to try again
        await eventually(lambda: "StatusCode.UNAVAILABLE" in caplog.text, 10)
        assert not flushing.done(), "the SDK must still be retrying while Redis is away"
    finally:
        cluster.resume()
    await asyncio.wait_for(flushing, 30)
    await eventually(lambda: all(a.admin_get("/health/ready")[0] == 200 for a in fleet.agents), 15)
    refused = sum(a.stats()["spans"]["refused"].get("buffer_unavailable", 0) for a in fleet.agents)
    assert refused > 0
    traces = before | during
    await fleet.all_decided(traces)
    await fleet.delivered_once(traces)


async def test_three_agents_keep_the_cluster_wide_rate_limit(make_fleet: MakeFleet) -> None:
    rate = 30  # spans per second for the whole fleet; every trace has 3 spans
    burst = 9
    limit = {"name": "limit", "type": "rate_limiting", "rate_limiting": {"spans_per_second": rate, "burst_capacity": burst}}
    fleet = await make_fleet([limit])
    traces: dict[str, bool] = {}
    started = time.monotonic()
    while time.monotonic() - started < 4.0:  # three times the budget, for four seconds
        traces |= fleet.send(3, error=lambda i: False)
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    await fleet.flush()
    decided = await eventually(lambda: (d := fleet.decisions(list(traces))) and all(d.values()) and d, 20)
    kept_spans = 3 * sum(1 for value in decided.values() if value.startswith(b"1"))
    expected = rate * elapsed + burst
    assert abs(kept_spans - expected) <= 0.15 * expected, f"kept {kept_spans} spans, expected about {expected:.0f}"
