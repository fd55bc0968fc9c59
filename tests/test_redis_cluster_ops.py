"""What Redis Cluster does in production, done to a shared buffer under load: a slot holding one
of the buffer's shards migrated to another master (its keys split between the two for a while),
a master added and given shards, against real servers (tests/redis_servers.py).

Three agents (in-process buffers) take requests from clients that retry what is refused, as an
OTLP SDK does, and decide what falls due (every trace is kept, so that a span arriving after its
trace was decided is answered with the verdict). Whatever the cluster does, every span a client
was told was taken is decided; a trace is decided twice only when a settlement could not reach
its shard and another agent took the trace over after its lease (counted), and a span taken twice
is one the agents counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry
from redis.cluster import key_slot
from redis.exceptions import AskError, MovedError, TryAgainError

from tailsampler.collector.buffer import BufferFull, BufferUnavailable, Claimed, Settlement
from tailsampler.collector.buffer.redis import RedisTraceBuffer, shard_keys
from tailsampler.collector.wire import shard_of
from tailsampler.collector.buffer.redis_state import RedisState
from tailsampler.collector.config import BufferLimits, Config
from tailsampler.collector.wire import Fragment
from tailsampler.common.settings import decode
from tailsampler.common.verdict import Verdict
from tests.otlp_data import fragments, new_trace_id
from tests.redis_servers import RedisCluster, SlotMigration
from tests.waiting import eventually

SHARDS = 16
PREFIX = "ts"


def shard_slot(shard: int) -> int:
    return key_slot(shard_keys(PREFIX, shard)[0])


@dataclass
class Agent:
    buffer: RedisTraceBuffer
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@dataclass
class Load:
    """Clients sending requests of four traces' fragments to three agents, retrying what is
    refused; deciders claiming and settling on each agent; and what each saw."""

    agents: list[Agent]
    accepted: dict[bytes, list[Fragment]] = field(default_factory=dict)
    late: Counter[bytes] = field(default_factory=Counter)  # fragment -> times answered with its trace's verdict
    # trace -> each time it was decided: the data claimed, then what settling returned
    decided: dict[bytes, list[list[bytes]]] = field(default_factory=dict)
    refusals: list[BaseException] = field(default_factory=list)  # the causes of BufferUnavailable
    requests_accepted: int = 0
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> "Load":
        self.tasks = [asyncio.create_task(self.client(i)) for i in range(3)]
        self.tasks += [asyncio.create_task(self.decider(a)) for a in self.agents]
        return self

    def alive(self) -> None:
        """A client or decider that met what it does not expect fails the test with it."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    async def client(self, index: int, open_traces: int = 12) -> None:
        """Each request carries fragments of four traces; a trace gets three fragments over time."""
        rng = random.Random(index)
        traces = [[new_trace_id(), 0] for _ in range(open_traces)]
        while not self.stopping:
            request: dict[bytes, Fragment] = {}
            for entry in rng.sample(traces, 4):
                if entry[1] == 3:
                    entry[0], entry[1] = new_trace_id(), 0
                entry[1] += 1
                request |= fragments(entry[0], rng.randint(1, 3), root=entry[1] == 1)
            agent = self.agents[(index + self.requests_accepted) % len(self.agents)]
            await self._send(agent, request)

    async def _send(self, agent: Agent, request: dict[bytes, Fragment]) -> None:
        while True:
            try:
                result = await agent.buffer.append(request, time.time())
            except BufferUnavailable as exc:
                self.refusals.append(exc.__cause__ or exc)
                await asyncio.sleep(0.02)  # the SDK's retry
                continue
            except BufferFull:
                await asyncio.sleep(0.02)
                continue
            for trace_id, fragment in request.items():
                self.accepted.setdefault(trace_id, []).append(fragment)
                if trace_id in result.late_kept:
                    self.late[fragment.data] += 1
            self.requests_accepted += 1
            return

    async def decider(self, agent: Agent) -> None:
        while True:  # until the fixture stops it
            try:
                claimed = await agent.buffer.claim_due(time.time(), 200)
                for c in claimed:
                    self.decided.setdefault(c.trace_id, []).append([c.data])
                kept = [Settlement(c.trace_id, Verdict(True, "test")) for c in claimed]
                for trace_id, rest in (await agent.buffer.settle(kept, time.time())).items():
                    self.decided[trace_id][-1].append(rest)
                await agent.buffer.renew(time.time())
            except BufferUnavailable:
                pass
            await asyncio.sleep(0.02)

    def waiting(self) -> list[bytes]:
        return [t for t in self.accepted if t not in self.decided]

    def refused(self, cause: type[BaseException] | tuple[type[BaseException], ...], since: int) -> bool:
        self.alive()
        return any(isinstance(r, cause) for r in self.refusals[since:])

    def check(self) -> None:
        """Every accepted fragment decided (buffered, or answered with its trace's verdict), a
        trace decided again only when taken over after its lease, and every fragment taken
        twice counted. A trace taken over is judged by its last decision, which had all of it."""
        assert not self.waiting(), f"{len(self.waiting())} accepted traces were never decided"
        again = sum(len(times) - 1 for times in self.decided.values())
        taken_over = sum(a.metric("tailsampler_redis_reclaimed_traces_total") for a in self.agents)
        print({op: sum(a.metric("tailsampler_redis_unavailable_total", operation=op) for a in self.agents) for op in ("append", "claim", "settle", "renew", "occupancy")})
        assert again == taken_over, f"{again} traces decided again, {taken_over} taken over after a lease"
        copies = 0
        for trace_id, sent in self.accepted.items():
            data = b"".join(self.decided[trace_id][-1])
            for fragment in sent:
                taken = data.count(fragment.data) + self.late[fragment.data]
                assert taken >= 1, f"an accepted fragment of trace {trace_id.hex()} was lost"
                copies += (taken - 1) * fragment.span_count
        counted = sum(a.metric("tailsampler_redis_refused_buffered_spans_total") for a in self.agents)
        assert copies == counted, f"{copies} spans were buffered twice, {counted} counted"


def agent(cluster: RedisCluster) -> Agent:
    config = decode({
        "tail_sampling": {"decision_wait": "300ms"},
        "buffer": {
            "type": "redis", "url": cluster.url, "cluster": True, "shards": SHARDS, "key_prefix": PREFIX,
            "lease": "2s", "timeout": "500ms",
        },
    }, Config)
    registry = CollectorRegistry()
    return Agent(RedisTraceBuffer(BufferLimits.of(config), config.buffer, registry), registry)


@pytest.fixture
async def load(movable_cluster: RedisCluster) -> AsyncIterator[Callable[[], Load]]:
    """Start three agents, their deciders and three clients; stop and check them at the end."""
    running: list[Load] = []

    def start() -> Load:
        running.append(Load([agent(movable_cluster) for _ in range(3)]).start())
        return running[-1]

    yield start
    for work in running:
        work.stopping = True
        for task in work.tasks:
            task.cancel()
        await asyncio.gather(*work.tasks, return_exceptions=True)
        for a in work.agents:
            await a.buffer.close()


async def finish(work: Load, before: int) -> None:
    """Traffic goes on after the move until every client had more requests taken, then stops;
    once the buffer is empty (traces whose settlement failed taken over after their lease),
    every accepted trace must have been decided."""
    await eventually(lambda: work.requests_accepted >= before + 30, 20, "clients are served again after the move")
    work.stopping = True

    async def empty() -> bool:
        work.alive()
        try:
            return (await work.agents[0].buffer.occupancy()).traces == 0 and not work.waiting()
        except BufferUnavailable:
            return False

    await eventually(empty, 20, "every accepted trace decided and the buffer empty")
    work.check()


def split(migration: SlotMigration) -> None:
    """Half of the shard's trace keys (fragments, or a verdict once decided) to the target, its
    sorted sets and counters left on the source: a script that declares them is refused with
    TRYAGAIN (or, when the shard has no traces waiting at that moment and so no sorted sets,
    with ASK)."""
    keys = [k for k in migration.keys() if b":s:" in k]
    assert keys, "the shard holds traces and decisions"
    migration.move(keys[: max(1, len(keys) // 2)])


async def hold(work: Load, cause: type[BaseException] | tuple[type[BaseException], ...], what: str) -> None:
    """Keep the cluster as it is until some request was refused because of it."""
    since = len(work.refusals)
    try:
        await eventually(lambda: work.refused(cause, since), 20, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (refused for: {Counter(type(r).__name__ for r in work.refusals[since:])})") from None


# The cluster is changed from a thread: the agents' event loop must not stop while it is.


async def test_a_slot_migrated_under_load_loses_nothing_and_decides_each_trace_once(
    movable_cluster: RedisCluster, load: Callable[[], Load]
) -> None:
    work = load()
    await eventually(lambda: len(work.decided) >= 50, 20, "the fleet is busy deciding")
    shard = 5
    source = movable_cluster.owner(shard_slot(shard))
    target = next(m for m in movable_cluster.masters() if m is not source)
    migration = await asyncio.to_thread(movable_cluster.migration(shard_slot(shard), target).begin)
    await asyncio.to_thread(split, migration)
    # some of the shard's keys on each node: the shard's scripts are refused
    await hold(work, (TryAgainError, AskError), "an append refused while the shard's keys are split")
    await asyncio.to_thread(migration.move_keys)
    # every key on the target, the slot not handed over yet: the source answers ASK
    await hold(work, AskError, "an append refused after ASK while the slot is still importing")
    before = work.requests_accepted
    await asyncio.to_thread(migration.finish)
    assert movable_cluster.owner(shard_slot(shard)) is target
    await finish(work, before)
    assert any(shard_of(t, SHARDS) == shard for t in work.accepted), "the moved shard took traces"


async def test_a_master_added_and_given_shards_takes_its_share(
    movable_cluster: RedisCluster, load: Callable[[], Load]
) -> None:
    work = load()
    await eventually(lambda: len(work.decided) >= 50, 20, "the fleet is busy deciding")
    loads_before = sum(a.metric("tailsampler_redis_script_loads_total") for a in work.agents)
    added = await asyncio.to_thread(movable_cluster.add_master)
    # rebalance: a quarter of the shards go to the new master, one slot after another
    for shard in range(0, SHARDS, 4):
        migration = await asyncio.to_thread(movable_cluster.migration(shard_slot(shard), added).begin)
        await asyncio.to_thread(split, migration)
        await hold(work, (TryAgainError, AskError), f"shard {shard} refused while its keys are split")
        await asyncio.to_thread(migration.finish)
    await finish(work, work.requests_accepted)
    assert int(added.client.execute_command("DBSIZE")) > 0, "the new master holds the shards it was given"
    assert sum(a.metric("tailsampler_redis_script_loads_total") for a in work.agents) > loads_before, \
        "the new master had the scripts loaded when it first refused them"


async def test_every_script_of_a_shard_waits_while_its_keys_are_split(movable_cluster: RedisCluster) -> None:
    """Append, claim and settle of the shard being moved are refused (TRYAGAIN, then ASK) rather
    than run with some of its keys on each node; the other shards go on; once the slot is handed
    over, the agent follows the MOVED and finds everything on the new master."""
    one = agent(movable_cluster)
    state = RedisState(decode({"buffer": {"type": "redis", "url": movable_cluster.url, "cluster": True, "shards": SHARDS}}, Config).buffer)
    try:
        moving, other = trace_in(3), trace_in(9)
        now = time.time()
        await one.buffer.append({**fragments(moving, 2), **fragments(other, 1)}, now - 1)
        [first] = [c for c in await one.buffer.claim_due(now, 10) if c.trace_id == moving] or [None]
        assert first is not None
        late = fragments(moving, 1)
        await one.buffer.append(late, now)  # arrives while the trace is being decided
        source = movable_cluster.owner(shard_slot(3))
        target = next(m for m in movable_cluster.masters() if m is not source)
        migration = movable_cluster.migration(shard_slot(3), target).begin()
        migration.move([f"{PREFIX}:{{3}}:s:{moving.hex()}".encode()])  # the span key moves, the sorted sets stay

        for attempt in (
            one.buffer.append(fragments(trace_in(3), 1), now),
            one.buffer.settle([Settlement(moving, Verdict(True, "test"))], now),
        ):
            with pytest.raises(BufferUnavailable) as refused:
                await attempt
            assert isinstance(refused.value.__cause__, TryAgainError)
        assert (await state.check())[0], "a shard being migrated is still served"
        await one.buffer.append(fragments(other, 1), now)  # another shard is not held up

        migration.move_keys()
        with pytest.raises(BufferUnavailable) as refused:
            await one.buffer.append(fragments(trace_in(3), 1), now)
        assert isinstance(refused.value.__cause__, AskError) and not isinstance(refused.value.__cause__, MovedError)

        migration.finish()
        # the settle refused above handed the trace back to its lease: it is claimed again, whole
        reclaimed = await eventually(lambda: _claim(one, moving), 10, "the trace is claimed again after its lease")
        assert reclaimed.data == first.data + late[moving].data
        assert await one.buffer.settle([Settlement(moving, Verdict(True, "test"))], time.time()) == {}
        assert target.client.get(f"{PREFIX}:{{3}}:s:{moving.hex()}") == b"1:test", "the decision is on the new master"
    finally:
        await one.buffer.close()
        await state.close()


def trace_in(shard: int) -> bytes:
    while True:
        trace_id = new_trace_id()
        if shard_of(trace_id, SHARDS) == shard:
            return trace_id


async def _claim(one: Agent, trace_id: bytes) -> Claimed | None:
    return next((c for c in await one.buffer.claim_due(time.time(), 100) if c.trace_id == trace_id), None)


async def test_readiness_names_the_shards_whose_master_is_down_and_comes_back_with_it(movable_cluster: RedisCluster) -> None:
    state = RedisState(decode({"buffer": {"type": "redis", "url": movable_cluster.url, "cluster": True, "shards": SHARDS}}, Config).buffer)
    try:
        ready, detail = await state.check()
        assert ready and "ok (16 shard(s))" in detail
        down = movable_cluster.masters()[1]
        shards = [n for n in range(SHARDS) if movable_cluster.owner(shard_slot(n)) is down]
        assert shards, "the master holds shards"
        down.kill()
        ready, detail = await state.check()
        assert not ready
        assert f"shard(s) {', '.join(map(str, shards))} of 16 unavailable" in detail
        down.start()  # back on its port with its slots (and none of its data)
        await eventually(lambda: _ready(state), 15, "ready again once the master is back")
    finally:
        await state.close()


async def _ready(state: RedisState) -> bool:
    return (await state.check())[0]
