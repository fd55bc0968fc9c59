"""``buffer.wait_replicas``: a request is acknowledged only once the replicas have its spans.

Against a real master and replica: appends wait for the replica (WAIT on the connection that ran
the scripts); a replica that falls behind turns appends into retryable refusals, whose spans the
master took anyway and counts; asking for more replicas than there are refuses every append.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector import wire
from tailsampler.collector.buffer import BufferUnavailable
from tailsampler.collector.buffer.redis import RedisTraceBuffer
from tailsampler.collector.buffer.redis_routing import NotReplicated
from tailsampler.collector.config import BufferLimits, Config, parse_config
from tailsampler.common.errors import ConfigError
from tailsampler.common.settings import decode
from tests.otlp_data import fragments, new_trace_id
from tests.redis_servers import RedisProcess


def replicated_buffer(master: RedisProcess, wait_replicas: int, registry: CollectorRegistry) -> RedisTraceBuffer:
    config = decode({"buffer": {"type": "redis", "url": master.url, "timeout": "400ms", "wait_replicas": wait_replicas}}, Config)
    return RedisTraceBuffer(BufferLimits.of(config), config.buffer, registry)


def test_wait_replicas_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: buffer.wait_replicas: must be 0 \(do not wait\) or more"):
        parse_config("buffer: {type: redis, wait_replicas: -1}", "x.yaml")


async def test_an_append_is_acknowledged_once_the_replica_has_it(replicated_redis: tuple[RedisProcess, RedisProcess]) -> None:
    master, replica = replicated_redis
    registry = CollectorRegistry()
    buf = replicated_buffer(master, 1, registry)
    try:
        tid = new_trace_id()
        sent = fragments(tid, 3)
        await buf.append(sent, time.time())
        # acknowledged: the replica has the spans already, not eventually
        # the trace's resources (stored once per shard and period) are on the replica too
        resources = {d: h for key in replica.client.keys("ts:{0}:r:*") for d, h in replica.client.hgetall(key).items()}
        assert wire.unchain(replica.client.get(f"ts:{{0}}:s:{tid.hex()}"), resources) == (sent[tid].data, sent[tid].facts)

        replica.pause()  # a replica that falls behind
        try:
            late = fragments(new_trace_id(), 2)
            started = time.monotonic()
            with pytest.raises(BufferUnavailable) as refused:
                await buf.append(late, time.time())
            assert isinstance(refused.value.__cause__, NotReplicated)
            assert "0 of 1 replica(s)" in str(refused.value)
            assert time.monotonic() - started < 1.0, "WAIT gives up within half the timeout"
        finally:
            replica.resume()
        # the master ran the script: the client's retry will buffer those spans again, and they are counted
        assert registry.get_sample_value("tailsampler_redis_refused_buffered_spans_total") == 2
        await buf.append(fragments(new_trace_id(), 1), time.time())  # the replica caught up: acknowledged again
    finally:
        await buf.close()


async def test_more_replicas_asked_than_there_are_refuses_every_append(replicated_redis: tuple[RedisProcess, RedisProcess]) -> None:
    master, _ = replicated_redis
    buf = replicated_buffer(master, 2, CollectorRegistry())
    try:
        # the decision loop's first claim loads the scripts (a round that meets NOSCRIPT would
        # spend its time in a WAIT that cannot succeed, and be refused as stale instead)
        await buf.claim_due(time.time(), 1)
        with pytest.raises(BufferUnavailable, match=r"1 of 2 replica\(s\) acknowledged"):
            await buf.append(fragments(new_trace_id(), 1), time.time())
    finally:
        await buf.close()
