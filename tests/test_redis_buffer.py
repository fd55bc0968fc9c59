"""The Redis buffer against real servers: a standalone Valkey/Redis and a 3-master cluster.

What only a shared buffer has to get right: sharding agreed by every process, leases that pass a
dead agent's traces to another, decisions visible to every agent, bounds enforced inside Redis,
scripts that survive a SCRIPT FLUSH, TTLs on every key, and a paused Redis.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest
import redis

from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import BufferFull, BufferUnavailable, Occupancy, Settlement
from tailsampler.collector.wire import Fragment
from tailsampler.collector.buffer.redis import RedisTraceBuffer
from tailsampler.collector.wire import shard_of
from tailsampler.collector.buffer.redis_state import RedisState
from tailsampler.collector.config import BufferConfig, BufferLimits, Config
from tailsampler.common.settings import decode
from tailsampler.common.verdict import DROPPED, Verdict
from tests.otlp_data import fragments, new_trace_id, stored_size
from tests.redis_servers import RedisCluster, RedisProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    url: str
    cluster: bool
    nodes: list[redis.Redis]

    def client(self) -> redis.Redis | redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url) if self.cluster else self.nodes[0]


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("clean_redis_cluster")
        return Target(cluster.url, True, [node.client for node in cluster.nodes])
    url = request.getfixturevalue("clean_redis_url")
    return Target(url, False, [redis.Redis.from_url(url)])


@pytest.fixture
def standalone(clean_redis_url: str) -> Target:
    return Target(clean_redis_url, False, [redis.Redis.from_url(clean_redis_url)])


def agent_config(target: Target, overflow: str = "decide_early", ts: dict | None = None, **buffer: object) -> Config:
    return decode({
        "tail_sampling": {"decision_wait": "1s", **(ts or {})},
        "buffer": {"type": "redis", "url": target.url, "cluster": target.cluster, "lease": "2s", "overflow": overflow, **buffer},
    }, Config)


def redis_buffer(config: Config) -> RedisTraceBuffer:
    return RedisTraceBuffer(BufferLimits.of(config), config.buffer, CollectorRegistry())


class Buffers:
    """Buffers (agents) on one target, and the state an agent shares beside its buffer; all are
    closed at teardown."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.made: list[RedisTraceBuffer | RedisState] = []

    async def __call__(self, overflow: str = "decide_early", ts: dict | None = None, **buffer: object) -> RedisTraceBuffer:
        buf = redis_buffer(agent_config(self.target, overflow, ts, **buffer))
        self.made.append(buf)
        return buf

    async def shared(self, **buffer: object) -> RedisState:
        state = RedisState(agent_config(self.target, **buffer).buffer)
        await state.start()
        self.made.append(state)
        return state

    async def close(self) -> None:
        for made in self.made:
            await made.close()


@pytest.fixture
async def make_buffer(target: Target) -> AsyncIterator[Buffers]:
    buffers = Buffers(target)
    yield buffers
    await buffers.close()


@pytest.fixture
async def make_standalone(standalone: Target) -> AsyncIterator[Buffers]:
    buffers = Buffers(standalone)
    yield buffers
    await buffers.close()


def ids_in_distinct_shards(count: int, shards: int) -> list[bytes]:
    found: dict[int, bytes] = {}
    while len(found) < count:
        trace_id = new_trace_id()
        found.setdefault(shard_of(trace_id, shards), trace_id)
    return list(found.values())


def same_shard_as(trace_id: bytes, shards: int) -> bytes:
    while True:
        other = new_trace_id()
        if shard_of(other, shards) == shard_of(trace_id, shards):
            return other


async def test_each_trace_goes_to_one_agent_and_late_spans_follow_the_decision(make_buffer: Buffers) -> None:
    a, b = await make_buffer(), await make_buffer()
    now = time.time()
    first = {tid: f for _ in range(30) for tid, f in fragments(new_trace_id(), 3).items()}
    second = {tid: fragments(tid, 2)[tid] for tid in first}
    await a.append(first, now)
    await b.append(second, now + 0.1)
    assert await a.claim_due(now + 0.5, 100) == [], "nothing is due before decision_wait"

    some = await a.claim_due(now + 1.5, 17)
    assert len(some) == 17, "a limit below the due count is filled from every shard"
    rest = await asyncio.gather(a.claim_due(now + 1.5, 100), b.claim_due(now + 1.5, 100))
    by_agent = [{c.trace_id: c for c in batch} for batch in (some + rest[0], rest[1])]
    assert not by_agent[0].keys() & by_agent[1].keys(), "a trace was handed to two agents"
    assert by_agent[0].keys() | by_agent[1].keys() == first.keys()
    for batch in by_agent:
        for tid, claimed in batch.items():
            assert claimed.data == first[tid].data + second[tid].data
            assert claimed.reason == "deadline"

    kept = sorted(first)[:10]
    for buf, batch in zip((a, b), by_agent):
        assert await buf.settle([Settlement(t, Verdict(True, "errors", 4.0) if t in kept else DROPPED) for t in batch], now + 2) == {}
    assert await a.occupancy() == await b.occupancy() == Occupancy(0, 0)

    late = {tid: fragments(tid, 4)[tid] for tid in first}
    result = await b.append(late, now + 3)
    assert result.late_kept == {t: Verdict(True, "errors", 4.0) for t in kept}
    assert result.late_dropped_spans == 4 * (len(first) - len(kept))
    assert (await b.occupancy()).traces == 0


async def test_spans_appended_while_a_trace_is_decided_are_returned_by_settle(make_buffer: Buffers) -> None:
    a, b = await make_buffer(), await make_buffer()
    now = time.time()
    tid = new_trace_id()
    await a.append(fragments(tid, 2), now)
    [claimed] = await a.claim_due(now + 2, 10)
    straggler = fragments(tid, 1)
    assert (await b.append(straggler, now + 2.1)).late_kept == {}
    assert await a.settle([Settlement(tid, Verdict(True, "slow"))], now + 2.2) == {tid: straggler[tid].data}
    assert await b.occupancy() == Occupancy(0, 0)


@pytest.mark.parametrize("given,expected", [({}, 1), ({"cluster": True}, 16), ({"shards": 4}, 4), ({"cluster": True, "shards": 48}, 48)])
def test_shards_default_to_one_on_a_server_and_sixteen_on_a_cluster(given: dict, expected: int) -> None:
    assert decode({"type": "redis", **given}, BufferConfig).shards == expected


def test_shards_are_the_same_in_every_process() -> None:
    ids = [new_trace_id() for _ in range(50)]
    code = (
        "import json, sys; from tailsampler.collector.wire import shard_of; "
        "print(json.dumps([shard_of(bytes.fromhex(h), 16) for h in json.load(sys.stdin)]))"
    )
    # another process, with another str hash seed than this one, must agree
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps([t.hex() for t in ids]), capture_output=True,
        text=True, cwd=REPO, env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True,
    )
    shards = json.loads(out.stdout)
    assert shards == [shard_of(t, 16) for t in ids]
    assert len(set(shards)) > 8, "trace IDs should spread over the shards"


async def test_a_trace_lives_under_its_shards_hash_tag(make_buffer: Buffers, target: Target) -> None:
    buf = await make_buffer(key_prefix="tag", shards=8)
    tid = new_trace_id()
    await buf.append(fragments(tid), time.time())
    key = f"tag:{{{shard_of(tid, 8)}}}:s:{tid.hex()}"
    assert target.client().exists(key) == 1


async def test_a_live_agent_keeps_its_claims_by_renewing_them(make_buffer: Buffers) -> None:
    a, b = await make_buffer(lease="1s"), await make_buffer(lease="1s")
    tid = new_trace_id()
    await a.append(fragments(tid), time.time() - 5)
    assert [c.trace_id for c in await a.claim_due(time.time(), 10)] == [tid]
    deadline = time.monotonic() + 2.5  # more than two leases
    while time.monotonic() < deadline:
        await a.renew(time.time())  # what the decision loop does every tick
        assert await b.claim_due(time.time(), 10) == [], "a renewed claim was taken over"
        await asyncio.sleep(0.2)


CLAIMER = """
import asyncio, json, sys, time
from prometheus_client import CollectorRegistry
from tailsampler.collector.buffer.redis import RedisTraceBuffer
from tailsampler.collector.config import BufferLimits, Config
from tailsampler.common.settings import decode

async def main():
    config = decode({"buffer": json.loads(sys.argv[1])}, Config)
    buf = RedisTraceBuffer(BufferLimits.of(config), config.buffer, CollectorRegistry())
    claimed = await buf.claim_due(time.time(), 1000)
    print(json.dumps([c.trace_id.hex() for c in claimed]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_traces_of_a_killed_agent_are_reclaimed_after_the_lease(make_buffer: Buffers, target: Target) -> None:
    b = await make_buffer(lease="1s")
    sent = {tid: f for _ in range(12) for tid, f in fragments(new_trace_id(), 2).items()}
    await b.append(sent, time.time() - 5)
    cfg = {"type": "redis", "url": target.url, "cluster": target.cluster, "lease": "1s"}
    agent = subprocess.Popen([sys.executable, "-c", CLAIMER, json.dumps(cfg)], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 20)
        assert sorted(json.loads(line)) == sorted(t.hex() for t in sent)
        assert await b.claim_due(time.time(), 100) == [], "the claims are still leased"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    reclaimed: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 5
    while len(reclaimed) < len(sent) and time.monotonic() < deadline:
        reclaimed.update((c.trace_id, c.data) for c in await b.claim_due(time.time(), 100))
        await asyncio.sleep(0.1)
    assert reclaimed == {tid: f.data for tid, f in sent.items()}


async def test_closing_hands_claims_back_and_draining_takes_nothing(make_buffer: Buffers) -> None:
    a, b = await make_buffer(lease="60s"), await make_buffer(lease="60s")
    tid = new_trace_id()
    await a.append(fragments(tid), time.time() - 5)
    assert len(await a.claim_due(time.time(), 10)) == 1
    await a.append(fragments(new_trace_id()), time.time())
    assert await a.claim_due(time.time(), 100, draining=True) == [], "pending traces belong to the fleet, not to a stopping agent"
    await a.close()
    assert [c.trace_id for c in await b.claim_due(time.time(), 10)] == [tid]


async def test_occupancy_is_cluster_wide(make_buffer: Buffers) -> None:
    a, b = await make_buffer(), await make_buffer()
    now = time.time()
    sent_a = {tid: f for _ in range(5) for tid, f in fragments(new_trace_id(), 2).items()}
    sent_b = {tid: f for _ in range(7) for tid, f in fragments(new_trace_id(), 1).items()}
    await a.append(sent_a, now)
    await b.append(sent_b, now)
    # what the keys hold: each fragment's facts record and stored body, its resources by digest
    total = sum(map(stored_size, (*sent_a.values(), *sent_b.values())))
    assert await a.occupancy() == await b.occupancy() == Occupancy(12, total)


async def test_decide_early_hands_the_oldest_traces_to_the_decider(make_standalone: Buffers) -> None:
    buf = await make_standalone(shards=4, ts={"num_traces": 8, "decision_wait": "30s"})
    first = new_trace_id()
    ids = [first, same_shard_as(first, 4), same_shard_as(first, 4)]  # 8 traces over 4 shards: 2 per shard
    now = time.time()
    assert (await buf.append(fragments(ids[0]), now)).early == 0
    assert (await buf.append(fragments(ids[1]), now + 1)).early == 0
    assert (await buf.append(fragments(ids[2]), now + 2)).early == 1
    claimed = await buf.claim_due(now + 3, 10)
    assert [(c.trace_id, c.reason) for c in claimed] == [(ids[0], "overflow")]
    assert (await buf.occupancy()).traces == 3


async def test_decide_early_bounds_bytes_too(make_standalone: Buffers) -> None:
    ids = [new_trace_id() for _ in range(4)]
    sent = [fragments(tid, 5) for tid in ids]
    size = stored_size(sent[0][ids[0]])
    buf = await make_standalone(shards=1, max_bytes=3 * size, ts={"decision_wait": "30s"})
    now = time.time()
    early = [(await buf.append(request, now + i)).early for i, request in enumerate(sent)]
    assert early == [0, 0, 0, 1]
    assert [(c.trace_id, c.reason) for c in await buf.claim_due(now + 5, 10)] == [(ids[0], "overflow")]


async def test_backpressure_refuses_the_whole_request(make_standalone: Buffers) -> None:
    buf = await make_standalone(overflow="backpressure", shards=4, ts={"num_traces": 4})
    full, empty = ids_in_distinct_shards(2, 4)
    now = time.time()
    await buf.append(fragments(full), now)
    before = await buf.occupancy()
    request = {**fragments(empty), **fragments(same_shard_as(full, 4))}
    with pytest.raises(BufferFull) as refused:
        await buf.append(request, now)
    assert "num_traces" in refused.value.reason and refused.value.retry_after >= 1
    assert await buf.occupancy() == before, "part of a refused request was buffered"
    await buf.append(fragments(full, 2), now)  # more spans of a buffered trace still fit
    assert (await buf.occupancy()).traces == 1


async def test_a_trace_over_maximum_trace_size_is_decided_at_once(make_standalone: Buffers) -> None:
    buf = await make_standalone(ts={"maximum_trace_size_bytes": 600, "decision_wait": "30s"})
    tid, small = new_trace_id(), new_trace_id()
    now = time.time()
    assert (await buf.append({**fragments(tid, 2), **fragments(small)}, now)).early == 0
    assert (await buf.append(fragments(tid, 5), now)).early == 1
    [claimed] = await buf.claim_due(now + 1, 10)
    assert (claimed.trace_id, claimed.reason) == (tid, "size")


async def test_scripts_are_reloaded_after_script_flush(make_buffer: Buffers, target: Target) -> None:
    buf = await make_buffer()
    tid = new_trace_id()
    now = time.time()
    await buf.append(fragments(tid), now)
    for node in target.nodes:
        node.script_flush()
    await buf.append(fragments(tid, 2), now)
    for node in target.nodes:
        node.script_flush()
    [claimed] = await buf.claim_due(now + 2, 10)
    for node in target.nodes:
        node.script_flush()
    assert await buf.settle([Settlement(tid, Verdict(True, None))], now + 2) == {}
    assert len(claimed.data) == len(fragments(tid)[tid].data) + len(fragments(tid, 2)[tid].data)


async def test_every_key_has_a_ttl(make_buffer: Buffers, target: Target) -> None:
    buf, shared = await make_buffer(), await make_buffer.shared()
    bucket = shared.bucket("rate:test", 100, 200)
    await shared.budgets.sync()
    assert bucket.take(10)
    now = time.time()
    sent = {tid: f for _ in range(20) for tid, f in fragments(new_trace_id(), 2).items()}
    await buf.append(sent, now)
    claimed = await buf.claim_due(now + 2, 10)
    await buf.settle([Settlement(c.trace_id, Verdict(True, "p")) for c in claimed[:5]], now + 2)
    await buf.settle([Settlement(c.trace_id, DROPPED) for c in claimed[5:8]], now + 2)  # 2 stay claimed
    await shared.budgets.sync()
    keys = {key: node.pttl(key) for node in target.nodes for key in node.scan_iter(count=1000)}
    kinds = {key.decode().split(":")[2] for key in keys}
    assert {"s", "due", "claims", "meta", "agents", "b"} <= kinds
    values = {key: node.get(key) for node in target.nodes for key in node.scan_iter(match="*:s:*", count=1000)}
    decided = {key for key, value in values.items() if value[:1] in (b"0", b"1")}
    assert len(decided) == 8, "a decided trace's key holds its verdict"
    assert all(ttl > 0 for ttl in keys.values()), {k: t for k, t in keys.items() if t <= 0}


async def test_a_paused_redis_pushes_back_and_the_buffer_recovers(fresh_redis: RedisProcess) -> None:
    server = Target(fresh_redis.url, False, [fresh_redis.client])
    config = agent_config(server, timeout="500ms")
    buf, shared = redis_buffer(config), RedisState(config.buffer)
    await shared.start()
    try:
        tid = new_trace_id()
        first, retried = fragments(tid, 1, root=True), fragments(tid, 3)
        now = time.time()
        await buf.append(first, now)
        assert (await shared.check())[0]
        fresh_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BufferUnavailable):
                await buf.append(retried, now)
            assert time.monotonic() - started < 3, "a hung Redis must fail fast"
            ready, detail = await shared.check()
            assert not ready and "unavailable" in detail
        finally:
            fresh_redis.resume()
        await eventually(lambda: _ready(shared), 10, "the buffer recovers after Redis came back")
        await buf.append(retried, now)  # the client's retry of the refused request
        [claimed] = await buf.claim_due(now + 2, 10)
        assert claimed.data == first[tid].data + retried[tid].data, "the request refused while Redis was paused ran later"
    finally:
        await buf.close()
        await shared.close()


async def _ready(shared: RedisState) -> bool:
    return (await shared.check())[0]


async def test_a_resource_is_stored_once_per_shard_and_read_back_by_an_agent_that_never_saw_it(make_buffer: Buffers) -> None:
    """Fragments refer to their resource by digest: the resource's fields are in the shard's
    resource hash once, however many traces carry them, and not in the traces' keys."""
    a, b = await make_buffer(shards=1), await make_buffer(shards=1)
    now = time.time()
    sent: dict[bytes, Fragment] = {}
    for tid in (new_trace_id() for _ in range(6)):
        sent.update(fragments(tid, 2, service="payments"))
    await a.append(sent, now)
    node = make_buffer.target.client()
    hashes = [key for key in node.scan_iter(match="ts:{0}:r:*")]
    head = next(iter(sent.values())).pieces[1]
    assert len(hashes) == 1 and list(node.hgetall(hashes[0]).values()) == [head]
    for tid in sent:
        assert head not in node.get(f"ts:{{0}}:s:{tid.hex()}")
    claimed = await b.claim_due(now + 10, 100)  # b has no resource at hand: it reads the hash
    assert {c.trace_id: c.data for c in claimed} == {tid: f.data for tid, f in sent.items()}
    assert {c.trace_id: c.facts for c in claimed} == {tid: f.facts for tid, f in sent.items()}


async def test_a_trace_whose_resource_is_gone_is_kept_as_an_evaluation_error(make_standalone: Buffers) -> None:
    registry = CollectorRegistry()
    config = agent_config(make_standalone.target, shards=1)
    a = redis_buffer(config)
    b = RedisTraceBuffer(BufferLimits.of(config), config.buffer, registry)
    make_standalone.made += [a, b]
    tid = new_trace_id()
    now = time.time()
    await a.append(fragments(tid, 2), now)
    node = make_standalone.target.client()
    node.delete(*node.keys("ts:{0}:r:*"))  # evicted, say
    (claimed,) = await b.claim_due(now + 10, 10)
    assert claimed.trace_id == tid and claimed.facts == b""  # the decision loop refuses to read it: kept
    assert registry.get_sample_value("tailsampler_redis_missing_resources_total") == 1
