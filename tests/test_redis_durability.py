"""What Redis itself can do to the shared buffer in production, against real servers."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import BufferUnavailable
from tailsampler.collector.buffer.redis import RedisTraceBuffer
from tailsampler.collector.config import BufferLimits, Config
from tailsampler.common.settings import decode
from tests.otlp_data import fragments, new_trace_id
from tests.redis_servers import RedisProcess
from tests.waiting import eventually


async def _occupancy_after_reconnect(buf: RedisTraceBuffer) -> int:
    try:
        return (await buf.occupancy()).traces + 1
    except BufferUnavailable:  # the first call after the restart meets the dropped connection
        return 0


async def test_a_redis_restarted_without_persistence_is_reported_as_losing_the_buffer(
    fresh_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    config = decode({"buffer": {"type": "redis", "url": fresh_redis.url, "timeout": "1s"}}, Config)
    registry = CollectorRegistry()
    buf = RedisTraceBuffer(BufferLimits.of(config), config.buffer, registry)
    try:
        sent = {tid: f for _ in range(5) for tid, f in fragments(new_trace_id(), 2).items()}
        await buf.append(sent, time.time())
        assert (await buf.occupancy()).traces == 5
        fresh_redis.restart()
        caplog.set_level(logging.ERROR)
        assert await eventually(lambda: _occupancy_after_reconnect(buf), 10) == 1, "the buffer came back empty"
        assert registry.get_sample_value("tailsampler_redis_lost_traces_total") == 5
        assert "restarted and came back without the 5 trace(s)" in caplog.text
        assert (await buf.occupancy()).traces == 0
        assert registry.get_sample_value("tailsampler_redis_lost_traces_total") == 5, "a loss is counted once"
    finally:
        await buf.close()
