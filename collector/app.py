"""One running collector agent: wires receivers, buffer, decision loop, exporters and admin.

Shutdown order matters for "nothing accepted is lost": readiness goes false, receivers stop
taking spans, the buffer is drained through the policies (or dropped if configured), exporters
flush, and only then do connections close. With a write-ahead log (``buffer.wal``) nothing is
drained: pending traces, and kept ones whose delivery shutdown cut short, stay in the log, and
the next start takes them back before the receivers open.

A reload (``reload``: SIGHUP, ``POST /api/v1/reload``) re-reads the config file, checks it whole
and builds what changes (policies, exporters) before touching anything; the swap itself happens
between two decision rounds and cannot fail. Pending traces stay where they are, in the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from tailsampler.collector import logs, reload as live, trace_api
from tailsampler.collector.admin import AdminServer
from tailsampler.collector.buffer import BufferUnavailable, Occupancy, make_buffer
from tailsampler.collector.config import BufferLimits, Config, config_hash, config_warnings, load_config
from tailsampler.collector.console import console_routes
from tailsampler.collector.decide import DecisionLoop
from tailsampler.collector.fleet import agent_facts, fleet_view
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.history import FINE_STEP, History, read_counts
from tailsampler.collector.ingest import Ingest
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.overload import OverloadRelief
from tailsampler.collector.periodic import Periodic
from tailsampler.collector.receive import GrpcReceiver, HttpReceiver
from tailsampler.collector.reload import ReloadOutcome
from tailsampler.collector.stats import StatsQuery, snapshot, window_stats
from tailsampler.collector.summary import startup_summary, version
from tailsampler.common.errors import ConfigError
from tailsampler.policies import Engine, PolicyContext, build_engine
from tailsampler.storage import Exporter, ExporterSetupError, SqliteSpec, build_exporters, exporter_names

log = logging.getLogger(__name__)

_READINESS_TIMEOUT = 1.0
_STATS_INTERVAL = 2.0  # how often the buffer gauges are read and the fleet's counters published


class Collector:
    def __init__(self, config: Config, reuse_port: bool = False, source: str = "", worker: int | None = None) -> None:
        """``source`` is the config file (read again on reload; "" for a config given in code);
        ``worker`` is the index of a ``serve --workers`` process, whose admin port is offset by it."""
        self.config = config
        self.source = source
        self.config_hash = config_hash(config, source)
        self._reuse_port = reuse_port
        self._worker = worker
        self.metrics = Metrics()
        self.metrics.build_info.labels(version()).set(1)
        self.metrics.config_info.labels(self.config_hash).set(1)
        self.buffer, self.shared = make_buffer(config, self.metrics.registry)
        self.exporters = build_exporters(config.exporters, self.metrics.registry)
        self.forwarder = Forwarder(self.exporters, config.tail_sampling.recording)
        limits = BufferLimits.of(config)
        self.overload = OverloadRelief(config.tail_sampling.overload, limits.max_traces, limits.max_bytes, self.metrics)
        self.ingest = Ingest(self.buffer, self.forwarder, self.metrics, self.overload)
        self.loop = DecisionLoop(self.buffer, self._engine(config), self.forwarder, self.metrics, float(config.buffer.tick))
        otlp = config.receivers.otlp
        self.grpc = GrpcReceiver(self.ingest, otlp.grpc, self.metrics, otlp.auth) if otlp.grpc else None
        self.http = HttpReceiver(self.ingest, otlp.http, self.metrics, otlp.auth) if otlp.http else None
        admin = config.admin
        if worker is not None and admin.endpoint.port:
            admin = msgspec.structs.replace(admin, endpoint=admin.endpoint.with_port(admin.endpoint.port + worker))
        self.history = History(lambda: read_counts(self.metrics))
        self._sampler = Periodic("history", FINE_STEP, self.history.sample, aligned=True)
        self.admin = AdminServer(
            admin, self.metrics, self.readiness, self.stats,
            [*trace_api.routes(self._trace_store), *live.routes(self.reload), *console_routes(lambda: self.config, self._trace_store)],
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = False
        self._occupancy = Occupancy(0, 0)
        self._refresher = Periodic("occupancy-and-fleet-stats", _STATS_INTERVAL, self._refresh)
        # relief looks at the buffer's fill and the decision lag every tick: it has a tenth of the
        # buffer (90% -> full) to engage in, and a fast spike fills that in a second or two
        self._overload_check = Periodic("overload-check", float(config.buffer.tick), self._check_overload)
        self._reloading = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloads = {"applied": 0, "rejected": 0}
        self._loaded_at = time.time()

    def _engine(self, config: Config) -> Engine:
        return build_engine(config.tail_sampling, PolicyContext(clock=time.monotonic, bucket=self.shared.bucket))

    def _trace_store(self) -> str | None:
        """The SQLite store the trace API reads: the first ``sqlite`` exporter's, as configured now."""
        return next((spec.path for spec in self.config.exporters if isinstance(spec, SqliteSpec)), None)

    async def start(self) -> None:
        await self.shared.start()
        undelivered = await self.buffer.open(time.time())
        for exporter in self.exporters:
            await exporter.start()
        self._loop_task = asyncio.create_task(self.loop.run(undelivered), name="decision-loop")
        await self._refresher.start()
        await self._sampler.start()
        await self._overload_check.start()
        await self.admin.start()
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.start(self._reuse_port)
        ports = {"admin": self.admin.port}
        if self.grpc:
            ports["otlp/grpc"] = self.grpc.port
        if self.http:
            ports["otlp/http"] = self.http.port
        message, fields = startup_summary(self.config, self.source or "(no file)", self.config_hash, ports)
        log.info("%s", message, extra={logs.FIELDS: fields})
        for warning in config_warnings(self.config):
            log.warning("%s: %s", self.source or "config", warning)

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
        await self._overload_check.stop()
        if self._loop_task is not None:
            # a round waits while an exporter's queue is full: at the deadline it is cut short,
            # and what its exporters could not take is reported when they close
            try:
                await asyncio.wait_for(self._loop_task, remaining())
            except asyncio.TimeoutError:
                log.error("shutdown: the decision round did not finish within service.shutdown_timeout; stopping it")
        async with self._reloading:  # a reload in progress finishes its swap first
            pass
        drop = self.config.tail_sampling.drop_pending_traces_on_shutdown
        try:
            handled = await asyncio.wait_for(self.loop.drain(drop), remaining())
            log.info("shutdown: %s %d pending traces", "dropped" if drop else "decided", handled)
        except asyncio.TimeoutError:
            log.error("shutdown: timed out deciding pending traces")
        for exporter in self.exporters:
            await exporter.close(remaining())
        await self.loop.settled()
        await self.ingest.settled()
        if self._retiring:
            await asyncio.gather(*self._retiring)
        if not self.buffer.shared and (left := await self.buffer.occupancy()).traces:
            if self.config.buffer.wal is None:
                log.error("shutdown: %d trace(s) (%d bytes) still in the memory buffer are lost", left.traces, left.bytes)
            else:
                log.info(
                    "shutdown: %d trace(s) (%d bytes) stay in the write-ahead log for the next start",
                    left.traces, left.bytes,
                )
        await self.buffer.close()
        await self.shared.close()
        await self.admin.stop()
        self.stopped = True

    # -- live config changes ----------------------------------------------------------------

    async def reload(self) -> ReloadOutcome | None:
        """Read the config file again and take over what changed; None while shutting down."""
        if self._stopping:
            return None
        async with self._reloading:
            if self._stopping:
                return None
            outcome = await self._reload()
        self._reloads[outcome.result] += 1
        self.metrics.config_reloads.labels(outcome.result).inc()
        if outcome.result == "rejected":
            log.error(
                "config reload rejected, nothing changed (%d problem(s)): %s", len(outcome.problems), "; ".join(outcome.problems),
                extra={logs.FIELDS: {"problems": outcome.problems}},
            )
        elif outcome.changed:
            log.info("config reloaded from %s (config %s): %s", self.source, outcome.config_hash, ", ".join(outcome.changed))
        else:
            log.info("config reloaded from %s: nothing changed", self.source)
        return outcome

    async def _reload(self) -> ReloadOutcome:
        def rejected(*problems: object) -> ReloadOutcome:
            return ReloadOutcome("rejected", self.config_hash, problems=[str(p) for p in problems])

        if not self.source:
            return rejected("this agent was not started from a config file")
        try:
            config = load_config(self.source)
        except ConfigError as exc:
            return rejected(*str(exc).splitlines())
        digest = config_hash(config, self.source)
        changed = live.changed_keys(self.config, config)
        refused = live.restart_problems(changed)
        if refused:
            return rejected(*(f"{self.source}: {problem}" for problem in refused))
        if not changed:  # the same config, perhaps written otherwise: the file's hash is what shows
            self._set_hash(digest)
            return ReloadOutcome("applied", self.config_hash)
        running = {
            name: (spec, exporter)
            for name, spec, exporter in zip(exporter_names(self.config.exporters), self.config.exporters, self.exporters)
        }
        plan = live.plan_exporters(
            running, config.exporters, exporter_names(config.exporters),
            lambda specs, names: build_exporters(specs, self.metrics.registry, names),
        )
        try:
            for exporter in plan.new:
                await exporter.open()
        except ExporterSetupError as exc:
            await asyncio.gather(*(exporter.close(0.0, "unused") for exporter in plan.new))
            return rejected(f"{self.source}: {exc}")
        # load_config built these policies once already; now with this agent's shared budgets (last:
        # a budget shared through Redis takes the new rate as its policy is built)
        engine = self._engine(config)
        for warning in config_warnings(config):
            log.warning("%s: %s", self.source, warning)

        previous_route: list[asyncio.Future[None]] = []

        def swap() -> None:  # between two decision rounds; nothing here can fail
            self.loop.engine = engine
            self.buffer.set_decision_cache(config.tail_sampling.decision_cache)
            self.overload.configure(config.tail_sampling.overload)
            previous_route.append(self.forwarder.replace(plan.exporters, config.tail_sampling.recording))
            self.exporters = plan.exporters
            if config.service != self.config.service:
                logs.configure(config.service)
            self.config, self._loaded_at = config, time.time()
            self._set_hash(digest)

        await self.loop.between_rounds(swap)
        for exporter in plan.new:
            await exporter.start()
        if plan.removed or plan.replaced:
            task = asyncio.create_task(self._retire(plan, previous_route[0]), name="retire-exporters")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return ReloadOutcome("applied", self.config_hash, changed=changed)

    def _set_hash(self, digest: str) -> None:
        self.metrics.config_info.remove(self.config_hash)
        self.config_hash = digest
        self.metrics.config_info.labels(digest).set(1)

    async def _retire(self, plan: live.ExporterPlan, previous_route: asyncio.Future[None]) -> None:
        """Close the exporters a reload took away, once no hand-over to them is left: what they
        still hold is delivered within shutdown_timeout, or counted as given up."""
        await previous_route
        timeout = float(self.config.service.shutdown_timeout)
        gone: list[tuple[Exporter, str]] = [(e, "removed") for e in plan.removed] + [(e, "replaced") for e in plan.replaced]
        await asyncio.gather(*(exporter.close(timeout, reason) for exporter, reason in gone))
        log.info("exporters retired: %s", ", ".join(f"{e.name} ({reason})" for e, reason in gone))

    # -- what the admin API reports ---------------------------------------------------------

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
        # overload relief is the agent coping, not failing: reported, never "not ready"
        components["overload_relief"] = self.overload.status()
        if self._stopping:
            components["shutdown"] = {"ready": False, "detail": "shutting down"}
            ready = False
        return ready, components

    async def stats(self, query: StatsQuery = StatsQuery()) -> dict[str, object]:
        """This agent's sampling stats and, with a shared buffer, the fleet's (every live agent's
        counters added up, this agent's as of now, and which agent runs which config); with a
        window, totals and rates over it. While the buffer's store is away, the last buffer
        figures stand and the fleet is left out."""
        await self._read_occupancy()
        own = snapshot(self.metrics, self._occupancy)
        limits = BufferLimits.of(self.config)
        own["buffer"] |= {"type": self.config.buffer.type, "max_traces": limits.max_traces, "max_bytes": limits.max_bytes}
        own["agent"] = self._facts()
        own["config"] = {
            "file": self.source, "hash": self.config_hash, "loaded_at": self._loaded_at, "reloads": dict(self._reloads),
        }
        own["overload_relief"] = self.overload.status()
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
        admin = f"{self.config.admin.endpoint.host}:{self.admin.port}"
        return agent_facts(admin, self.history.started, self.exporters, time.time(), self.config_hash)

    async def _refresh(self) -> None:
        await self._read_occupancy()
        try:
            await self._publish()
        except BufferUnavailable as exc:
            log.debug("fleet stats not published: %s", exc)

    async def _check_overload(self) -> None:
        if self.overload.config is None:
            return
        try:
            occupancy = await self.buffer.occupancy()
        except BufferUnavailable:
            return  # the buffer reports its outage; relief waits for figures it can trust
        self.overload.observe(occupancy, self.loop.lag(time.time()), time.monotonic())

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
