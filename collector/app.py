"""One running collector agent: wires receivers, buffer, decision loop, exporters and admin.

Shutdown order matters for "nothing accepted is lost": readiness goes false, receivers stop
taking spans, the buffer is drained through the policies (or dropped if configured), exporters
flush, and only then do connections close.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from tailsampler.collector import trace_api
from tailsampler.collector.admin import AdminServer
from tailsampler.collector.buffer import BufferStats, BufferUnavailable, make_buffer
from tailsampler.collector.config import Config
from tailsampler.collector.decide import DecisionLoop
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.ingest import Ingest
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.periodic import Periodic
from tailsampler.collector.receive import GrpcReceiver, HttpReceiver
from tailsampler.collector.stats import merge, snapshot
from tailsampler.policies import PolicyContext, build_engine
from tailsampler.storage import SqliteSpec, build_exporters

log = logging.getLogger(__name__)

_READINESS_TIMEOUT = 1.0
_STATS_INTERVAL = 2.0  # how often an agent publishes its counters for fleet-wide stats


class Collector:
    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self._reuse_port = reuse_port
        self.metrics = Metrics()
        self.buffer = make_buffer(config, self.metrics.registry)
        self.engine = build_engine(config.tail_sampling, PolicyContext(clock=time.monotonic, bucket=self.buffer.bucket_factory()))
        self.exporters = build_exporters(config.exporters, self.metrics.registry)
        self.forwarder = Forwarder(self.exporters, config.tail_sampling.recording)
        self.ingest = Ingest(self.buffer, self.forwarder, self.metrics)
        self.loop = DecisionLoop(self.buffer, self.engine, self.forwarder, self.metrics, float(config.buffer.tick))
        otlp = config.receivers.otlp
        self.grpc = GrpcReceiver(self.ingest, otlp.grpc.endpoint, otlp.grpc.max_recv_msg_size_mib) if otlp.grpc else None
        self.http = HttpReceiver(self.ingest, otlp.http.endpoint, otlp.http.max_request_body_size_mib) if otlp.http else None
        stores = [spec.path for spec in config.exporters if isinstance(spec, SqliteSpec)]
        self.admin = AdminServer(
            config.admin.endpoint, self.metrics, self.readiness, self.stats, trace_api.routes(stores[0]) if stores else []
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = False
        self._buffered = BufferStats(0, 0)
        self._stats_publisher = Periodic("fleet-stats", _STATS_INTERVAL, self._publish_stats)

    async def start(self) -> None:
        await self.buffer.start()
        for exporter in self.exporters:
            await exporter.start()
        self._loop_task = asyncio.create_task(self.loop.run(), name="decision-loop")
        if self.buffer.shared:
            await self._stats_publisher.start()
        await self.admin.start()
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.start(self._reuse_port)
        log.info(
            "tailsampler listening: otlp/grpc %s, otlp/http %s, admin %s",
            self.grpc.port if self.grpc else "off",
            self.http.port if self.http else "off",
            self.admin.port,
        )

    async def stop(self) -> None:
        """Stop taking spans, decide what is pending, flush exporters, all within shutdown_timeout."""
        self._stopping = True
        deadline = time.monotonic() + float(self.config.service.shutdown_timeout)
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.stop(grace=min(5.0, max(0.0, deadline - time.monotonic())))
        self.loop.stop()
        await self._stats_publisher.stop()
        if self._loop_task is not None:
            await self._loop_task
        drop = self.config.tail_sampling.drop_pending_traces_on_shutdown
        try:
            handled = await asyncio.wait_for(self.loop.drain(drop), max(0.1, deadline - time.monotonic()))
            log.info("shutdown: %s %d pending traces", "dropped" if drop else "decided", handled)
        except asyncio.TimeoutError:
            log.error("shutdown: timed out deciding pending traces")
        for exporter in self.exporters:
            await exporter.close(max(0.1, deadline - time.monotonic()))
        await self.loop.settled()
        await self.buffer.close()
        await self.admin.stop()
        self.stopped = True

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        try:  # probes have short timeouts of their own: answer "not ready" rather than hang
            ready, detail = await asyncio.wait_for(self.buffer.check(), _READINESS_TIMEOUT)
        except asyncio.TimeoutError:
            ready, detail = False, f"no answer from the buffer's store within {_READINESS_TIMEOUT}s"
        components: dict[str, object] = {"buffer": {"type": self.config.buffer.type, "ready": ready, "detail": detail}}
        for exporter in self.exporters:
            healthy, info = exporter.health()
            # an exporter's trouble is reported, not made fatal: spans keep buffering while its
            # queue and circuit breaker hold the line, and a drained agent would only move the load
            components[f"exporter/{exporter.name}"] = {"healthy": healthy, **info}
        if self._stopping:
            components["shutdown"] = {"ready": False, "detail": "shutting down"}
            ready = False
        return ready, components

    async def stats(self) -> dict[str, object]:
        """This agent's sampling stats and, with a shared buffer, the fleet's (every live agent's
        counters added up; each agent publishes its own every few seconds). While the buffer's
        store is away, the last buffer figures stand and the fleet is left out."""
        try:
            self._buffered = await self.buffer.stats()
        except BufferUnavailable as exc:
            log.warning("buffer stats unavailable: %s", exc)
        self.metrics.buffer_traces.set(self._buffered.traces)
        self.metrics.buffer_bytes.set(self._buffered.bytes)
        own = snapshot(self.metrics, self._buffered)
        try:
            await self._share_stats()
            published = await self.buffer.fleet_stats()
        except BufferUnavailable:
            return own
        if published is not None:
            fleet = merge([msgspec.json.decode(p) for p in published])
            own["fleet"] = {**fleet, "buffer": own["buffer"], "agents": len(published)}
        return own

    async def _publish_stats(self) -> None:
        try:
            await self._share_stats()
        except BufferUnavailable as exc:
            log.debug("fleet stats not published: %s", exc)

    async def _share_stats(self) -> None:
        counters = snapshot(self.metrics, BufferStats(0, 0))
        del counters["buffer"]  # the buffer is shared: its figures are already fleet-wide
        await self.buffer.share_stats(msgspec.json.encode(counters))
