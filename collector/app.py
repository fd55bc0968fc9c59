"""One running collector agent: wires receivers, buffer, decision loop, exporters and admin.

Shutdown order matters for "nothing accepted is lost": readiness goes false, receivers stop
taking spans, the buffer is drained through the policies (or dropped if configured), exporters
flush, and only then do connections close.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tailsampler.collector import trace_api
from tailsampler.collector.admin import AdminServer
from tailsampler.collector.buffer import BufferUnavailable, Occupancy, make_buffer
from tailsampler.collector.config import BufferLimits, Config
from tailsampler.collector.console import console_routes
from tailsampler.collector.decide import DecisionLoop
from tailsampler.collector.fleet import agent_facts, fleet_view
from tailsampler.collector.history import FINE_STEP, History, read_counts
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.ingest import Ingest
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.periodic import Periodic
from tailsampler.collector.receive import GrpcReceiver, HttpReceiver
from tailsampler.collector.stats import StatsQuery, snapshot, window_stats
from tailsampler.policies import PolicyContext, build_engine
from tailsampler.storage import SqliteSpec, build_exporters

log = logging.getLogger(__name__)

_READINESS_TIMEOUT = 1.0
_STATS_INTERVAL = 2.0  # how often the buffer gauges are read and the fleet's counters published


class Collector:
    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self._reuse_port = reuse_port
        self.metrics = Metrics()
        self.buffer, self.shared = make_buffer(config, self.metrics.registry)
        self.engine = build_engine(config.tail_sampling, PolicyContext(clock=time.monotonic, bucket=self.shared.bucket))
        self.exporters = build_exporters(config.exporters, self.metrics.registry)
        self.forwarder = Forwarder(self.exporters, config.tail_sampling.recording)
        self.ingest = Ingest(self.buffer, self.forwarder, self.metrics)
        self.loop = DecisionLoop(self.buffer, self.engine, self.forwarder, self.metrics, float(config.buffer.tick))
        otlp = config.receivers.otlp
        self.grpc = GrpcReceiver(self.ingest, otlp.grpc, self.metrics, otlp.auth) if otlp.grpc else None
        self.http = HttpReceiver(self.ingest, otlp.http, self.metrics, otlp.auth) if otlp.http else None
        stores = [spec.path for spec in config.exporters if isinstance(spec, SqliteSpec)]
        self.history = History(lambda: read_counts(self.metrics))
        self._sampler = Periodic("history", FINE_STEP, self.history.sample, aligned=True)
        self.admin = AdminServer(
            config.admin,
            self.metrics,
            self.readiness,
            self.stats,
            [*(trace_api.routes(stores[0]) if stores else []), *console_routes(lambda: self.config, stores[0] if stores else None)],
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = False
        self._occupancy = Occupancy(0, 0)
        self._refresher = Periodic("occupancy-and-fleet-stats", _STATS_INTERVAL, self._refresh)

    async def start(self) -> None:
        await self.shared.start()
        for exporter in self.exporters:
            await exporter.start()
        self._loop_task = asyncio.create_task(self.loop.run(), name="decision-loop")
        await self._refresher.start()
        await self._sampler.start()
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

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.stop(grace=min(5.0, max(0.0, deadline - time.monotonic())))
        self.loop.stop()
        await self._refresher.stop()
        await self._sampler.stop()
        if self._loop_task is not None:
            # a round waits while an exporter's queue is full: at the deadline it is cut short,
            # and what its exporters could not take is reported when they close
            try:
                await asyncio.wait_for(self._loop_task, remaining())
            except asyncio.TimeoutError:
                log.error("shutdown: the decision round did not finish within service.shutdown_timeout; stopping it")
        drop = self.config.tail_sampling.drop_pending_traces_on_shutdown
        try:
            handled = await asyncio.wait_for(self.loop.drain(drop), remaining())
            log.info("shutdown: %s %d pending traces", "dropped" if drop else "decided", handled)
        except asyncio.TimeoutError:
            log.error("shutdown: timed out deciding pending traces")
        for exporter in self.exporters:
            await exporter.close(remaining())
        await self.loop.settled()
        if not self.buffer.shared and (left := await self.buffer.occupancy()).traces:
            log.error("shutdown: %d trace(s) (%d bytes) still in the memory buffer are lost", left.traces, left.bytes)
        await self.buffer.close()
        await self.shared.close()
        await self.admin.stop()
        self.stopped = True

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        try:  # probes have short timeouts of their own: answer "not ready" rather than hang
            ready, detail = await asyncio.wait_for(self.shared.check(), _READINESS_TIMEOUT)
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

    async def stats(self, query: StatsQuery = StatsQuery()) -> dict[str, object]:
        """This agent's sampling stats and, with a shared buffer, the fleet's (every live agent's
        counters added up, this agent's as of now); with a window, totals and rates over it. While
        the buffer's store is away, the last buffer figures stand and the fleet is left out."""
        await self._read_occupancy()
        own = snapshot(self.metrics, self._occupancy)
        limits = BufferLimits.of(self.config)
        own["buffer"] |= {"type": self.config.buffer.type, "max_traces": limits.max_traces, "max_bytes": limits.max_bytes}
        own["agent"] = self._facts()
        if query.window is not None:
            now = time.time()
            extent, intervals = self.history.intervals(query.window, now)
            covered = now - max(extent.first, self.history.started)
            own["window"] = window_stats(intervals, query, covered, extent.step, extent.first)
        try:
            await self._publish()
            fleet = await self.shared.fleet()
        except BufferUnavailable as exc:
            log.debug("fleet stats unavailable: %s", exc)
            return own
        if fleet is not None:
            own["fleet"] = fleet_view(fleet, own["buffer"], query)
        return own

    def _facts(self) -> dict[str, object]:
        return agent_facts(f"{self.config.admin.endpoint.host}:{self.admin.port}", self.history.started, self.exporters, time.time())

    async def _refresh(self) -> None:
        await self._read_occupancy()
        try:
            await self._publish()
        except BufferUnavailable as exc:
            log.debug("fleet stats not published: %s", exc)

    async def _read_occupancy(self) -> None:
        try:
            self._occupancy = await self.buffer.occupancy()
        except BufferUnavailable as exc:
            log.debug("buffer occupancy unavailable: %s", exc)
        self.metrics.buffer_traces.set(self._occupancy.traces)
        self.metrics.buffer_bytes.set(self._occupancy.bytes)

    async def _publish(self) -> None:
        counters = snapshot(self.metrics, Occupancy(0, 0))
        del counters["buffer"]  # the buffer is shared: its figures are already fleet-wide
        counters["agent"] = self._facts()
        counters["history"] = self.history.published(time.time())
        await self.shared.publish(counters)
