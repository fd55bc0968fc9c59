"""Redis Cluster at work while ``tailsampler serve`` agents take real SDK traffic: slots holding
shards migrated and a master added, a master of a 3-master, 3-replica cluster SIGKILLed and
replaced by its replica, and a Redis down for longer than the clients retry.

Every trace is kept, so every span the SDK sent must reach the downstream sink; what does not is
what the failover lost. Replication is asynchronous: a write acknowledged by the master just
before it died may not have reached its replica. The failover test makes that window visible by
holding the replica back (SIGSTOP, as a replica lagging under load) while the master takes
writes, then kills the master and lets the replica go: with ``buffer.wait_replicas: 1`` no
acknowledged span may be lost; without it, the test reports what was.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from redis.cluster import key_slot

from tailsampler.collector.buffer.redis import shard_keys
from tests.collectors import AgentProcess, collector_config
from tests.otlp_data import new_trace_id, request
from tests.otlp_sink import GrpcSink
from tests.redis_servers import RedisCluster, RedisProcess
from tests.sdk import SdkClient, remote_parent
from tests.waiting import eventually

KEEP_ALL = [{"name": "all", "type": "always_sample"}]


def agent_config(url: str, cluster: bool, sink: GrpcSink, **buffer: Any) -> dict[str, Any]:
    return collector_config(
        exporters=[{"type": "otlp", "endpoint": sink.endpoint, "insecure": True, "compression": "none"}],
        tail_sampling={"decision_wait": "1s", "policies": KEEP_ALL},
        buffer={"type": "redis", "url": url, "cluster": cluster, "lease": "3s", "tick": "50ms", "timeout": "500ms", **buffer},
        ports=True,
    )


@dataclass
class Traffic:
    """SDK clients, one per agent, sending traces spread over every agent from a thread (the
    sink answers on the test's event loop, which must keep running)."""

    agents: list[AgentProcess]
    clients: list[SdkClient]
    sink: GrpcSink
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, per_second: int = 100) -> None:
        def run() -> None:
            while not self._stop.wait(0.05):
                for _ in range(per_second // 20):
                    with self.clients[0].tracer.start_as_current_span("GET /item") as root:
                        trace_id = f"{root.get_span_context().trace_id:032x}"
                    for client in self.clients[1:]:
                        with client.tracer.start_as_current_span("child", context=remote_parent(trace_id)):
                            pass
                    self.sent += 1

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="traffic", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop making spans and wait until the SDKs delivered the last of them."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.gather(*(asyncio.to_thread(client.flush) for client in self.clients))

    def sent_spans(self) -> set[bytes]:
        return {span.context.span_id.to_bytes(8, "big") for client in self.clients for span in client.memory.get_finished_spans()}

    def delivered(self) -> list[bytes]:
        return [span.span_id for spans in self.sink.spans_by_trace().values() for span in spans]

    def metric(self, name: str) -> float:
        total = 0.0
        for agent in self.agents:
            with urllib.request.urlopen(f"http://{agent.admin_endpoint}/metrics", timeout=2) as response:
                text = response.read().decode()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
        return total

    def refused(self) -> int:
        return sum(agent.stats()["spans"]["refused"].get("buffer_unavailable", 0) for agent in self.agents)

    async def drained(self) -> None:
        """The shared buffer is empty and every exporter queue too: nothing more will arrive."""
        def idle() -> bool:
            return self.agents[0].stats()["buffer"]["traces"] == 0 and self.metric("tailsampler_exporter_queue_traces") == 0

        await eventually(idle, 30, "the buffer and the exporters' queues drained")


MakeTraffic = Callable[..., Awaitable[Traffic]]


@pytest.fixture
async def make_traffic(
    otlp_grpc_sink: GrpcSink, agent_process: Callable[[dict[str, Any]], AgentProcess], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeTraffic]:
    made: list[Traffic] = []

    async def make(url: str, cluster: bool, agents: int = 3, **buffer: Any) -> Traffic:
        agents = [agent_process(agent_config(url, cluster, otlp_grpc_sink, **buffer)) for _ in range(agents)]
        await asyncio.gather(*(asyncio.to_thread(agent.start) for agent in agents))
        clients = [SdkClient("grpc", agent.grpc_endpoint, service=f"svc{i}") for i, agent in enumerate(agents)]
        made.append(Traffic(agents, clients, otlp_grpc_sink))
        return made[-1]

    caplog.set_level(logging.WARNING, logger="opentelemetry.exporter.otlp.proto.grpc.exporter")
    yield make
    for traffic in made:
        traffic._stop.set()
        for client in traffic.clients:
            await asyncio.to_thread(client.shutdown)


def ready(agent: AgentProcess) -> bool:
    try:
        return agent.admin_get("/health/ready")[0] == 200
    except OSError:
        return False


def replicated_offset(node: RedisProcess) -> int:
    return int(node.client.info("replication")["master_repl_offset"])


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_a_master_killed_under_load_is_replaced_by_its_replica_and_the_agents_follow(
    replicated_cluster: RedisCluster, make_traffic: MakeTraffic, caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None], wait_replicas: int,
) -> None:
    cluster = replicated_cluster
    traffic = await make_traffic(cluster.url, True, wait_replicas=wait_replicas)
    traffic.start()
    await eventually(lambda: len(traffic.delivered()) > 300, 20, "traces flow end to end")

    victim = cluster.masters()[0]
    [replica] = cluster.replicas_of(victim)
    # the replica falls behind and its link drops (as when a slow replica outgrows its output
    # buffer): what the master takes from now on is on the master alone
    replica.pause()
    try:
        victim.client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        offset = replicated_offset(victim)
        await eventually(lambda: replicated_offset(victim) > offset + 5_000, 10, "the master took writes its replica does not have")
        victim.kill()
    finally:
        replica.resume()
    readiness: list[bool] = []

    def promoted() -> bool:
        readiness.extend(ready(agent) for agent in traffic.agents)
        return replica in cluster.masters()

    await eventually(promoted, 30, "the replica was promoted")
    assert not all(readiness), "readiness was false while the dead master's shards were unreachable"
    # the dead master's supervisor starts it again: it comes back as the new master's replica
    await asyncio.to_thread(cluster.rejoin, victim)
    await eventually(lambda: all(ready(agent) for agent in traffic.agents), 15, "every agent ready again, without a restart")
    assert traffic.refused() > 0, "ingest answered UNAVAILABLE while the shards were away"

    await eventually(lambda: len(traffic.delivered()) > 300 + 100, 20, "traces flow end to end after the failover")
    await traffic.stop()
    assert "Failed to export" not in caplog.text, "an SDK gave up on a batch: its spans were never accepted"
    await traffic.drained()
    sent, delivered = traffic.sent_spans(), traffic.delivered()
    lost = sent - set(delivered)
    figures = {
        "spans_sent": len(sent),
        "spans_lost": len(lost),
        "spans_delivered_twice": len(delivered) - len(set(delivered)),
        "spans_refused_after_some_shards_took_them": traffic.metric("tailsampler_redis_refused_buffered_spans_total"),
        "traces_taken_over_after_a_lease": traffic.metric("tailsampler_redis_reclaimed_traces_total"),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"failover with wait_replicas={wait_replicas}: {figures}")
    if wait_replicas:
        assert not lost, f"{len(lost)} of {len(sent)} acknowledged spans were lost in the failover"


async def test_shards_moved_and_a_master_added_under_sdk_traffic_lose_no_span(
    movable_cluster: RedisCluster, make_traffic: MakeTraffic
) -> None:
    cluster = movable_cluster
    traffic = await make_traffic(cluster.url, True, shards=16)
    traffic.start()
    await eventually(lambda: len(traffic.delivered()) > 300, 20, "traces flow end to end")

    async def move(slot: int, target: RedisProcess) -> None:
        """Move a slot, holding it half-moved until the agents refused a request for it."""
        migration = await asyncio.to_thread(cluster.migration(slot, target).begin)
        refused = traffic.refused()
        await asyncio.to_thread(lambda: migration.move(migration.keys()[::2]))
        await eventually(lambda: traffic.refused() > refused, 20, f"a request refused while slot {slot} is half-moved")
        await asyncio.to_thread(migration.finish)

    slots = [key_slot(shard_keys("ts", shard)[0]) for shard in range(16)]
    source = cluster.owner(slots[0])
    await move(slots[0], next(m for m in cluster.masters() if m is not source))
    added = await asyncio.to_thread(cluster.add_master)
    for slot in slots[1:4]:
        await move(slot, added)
    delivered = len(traffic.delivered())
    await eventually(lambda: len(traffic.delivered()) > delivered + 300, 20, "traces flow end to end after the moves")
    await traffic.stop()
    await traffic.drained()
    sent, delivered_ids = traffic.sent_spans(), traffic.delivered()
    assert not sent - set(delivered_ids), f"{len(sent - set(delivered_ids))} of {len(sent)} spans lost"
    twice = len(delivered_ids) - len(set(delivered_ids))
    counted = traffic.metric("tailsampler_redis_refused_buffered_spans_total")
    taken_over = traffic.metric("tailsampler_redis_reclaimed_traces_total")
    # a trace taken over after its lease is delivered again, all three of its spans
    assert twice <= counted + 3 * taken_over, f"{twice} spans delivered twice, {counted} + 3 x {taken_over} counted"


def resident_bytes(agent: AgentProcess) -> int:
    assert agent.process is not None
    for line in open(f"/proc/{agent.process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post(agent: AgentProcess, body: bytes, count: int) -> list[tuple[int, str | None]]:
    """``count`` OTLP/HTTP requests, one after another; each answer's status and Retry-After."""
    answers = []
    for _ in range(count):
        request = urllib.request.Request(
            f"http://{agent.http_endpoint}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answers.append((response.status, None))
        except urllib.error.HTTPError as exc:
            answers.append((exc.code, exc.headers.get("Retry-After")))
    return answers


async def test_a_redis_down_longer_than_the_clients_retry_is_outlived_and_the_agent_recovers_alone(
    fresh_redis: RedisProcess, make_traffic: MakeTraffic, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # the SDK gives a batch up after 2 s
    traffic = await make_traffic(fresh_redis.url, False, agents=1)
    [agent] = traffic.agents
    traffic.start(per_second=40)
    await eventually(lambda: len(traffic.delivered()) > 60, 20, "traces flow end to end")

    fresh_redis.kill()
    await eventually(lambda: not ready(agent), 10, "readiness false while Redis is away")
    await eventually(lambda: "Failed to export" in caplog.text, 20, "an SDK gave a batch up: Redis is away longer than it retries")

    # refused requests leave nothing behind: the agent's memory does not grow with them
    body = request(new_trace_id(), spans=20).SerializeToString()
    answers = await asyncio.to_thread(post, agent, body, 300)
    assert set(answers) == {(503, "1")}, "every request refused with 503 and Retry-After"
    before = resident_bytes(agent)
    await asyncio.to_thread(post, agent, body, 3000)
    grown = resident_bytes(agent) - before
    assert grown < 2_000_000, f"the agent grew by {grown} bytes over 3000 refused requests of {len(body)} bytes"
    assert agent.process is not None and agent.process.poll() is None, "the agent stays up"

    await traffic.stop()
    caplog.clear()
    fresh_redis.start()
    await eventually(lambda: ready(agent), 15, "ready again once Redis is back, without a restart")
    before_recovery = traffic.sent_spans()
    traffic.start(per_second=40)
    await eventually(lambda: len(traffic.sent_spans()) > len(before_recovery) + 120, 20, "new traffic")
    await traffic.stop()
    assert "Failed to export" not in caplog.text, "after Redis returned, every batch was taken"
    await eventually(lambda: not (traffic.sent_spans() - before_recovery) - set(traffic.delivered()), 20,
                     "every span sent after Redis returned delivered")
