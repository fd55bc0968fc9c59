"""What Redis itself can do to the shared buffer in production, against real servers."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import BufferUnavailable
from tailsampler.collector.buffer.redis import RedisTraceBuffer
from tailsampler.collector.config import BufferLimits, Config
from tailsampler.common.settings import decode
from tests.collectors import StartCollector, collector_config
from tests.otlp_data import fragments, new_trace_id, request
from tests.redis_servers import RedisProcess
from tests.waiting import eventually

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


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


async def test_a_request_taken_after_its_client_gave_up_is_counted(
    start_collector: StartCollector, fresh_redis: RedisProcess, tmp_path: Path
) -> None:
    """A Redis that answers late: the buffer takes the request after the client's deadline, so the
    client will resend it and the spans will arrive twice. That is counted, not hidden."""
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}], buffer={"type": "redis", "url": fresh_redis.url, "timeout": "6s"},
    ))
    await eventually(lambda: _received(collector, 0), 5)
    body = request(new_trace_id()).SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc.port}") as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        fresh_redis.pause()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await export(body, timeout=0.5)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            fresh_redis.resume()
    late = {"transport": "grpc", "outcome": "accepted_after_deadline"}
    await eventually(lambda: collector.metrics.registry.get_sample_value("tailsampler_requests_total", late) == 1, 10)


async def _received(collector: Any, spans: int) -> bool:
    return (await collector.stats())["spans"]["received"] == spans
