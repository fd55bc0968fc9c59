"""``tailsampler-loadgen bench``: tailsampler's costs beside a null OTLP server, in one run.

Requests are built before the clock starts (512 spans each by default), so the generator costs
little. Every figure is measured in each of several rounds and quoted as the median, and
throughput is quoted as a ratio to the null server measured in the same round, because on a
small shared machine absolute numbers drift while ratios hold.

Two collectors run per buffer type, one after the other:
- *hold* (decisions far in the future): ingest throughput, and memory per buffered span read as
  the growth of the collector's RSS (and Redis ``used_memory``) per round;
- *e2e* (the example policies, a short decision wait): CPU per span from ingest to export of the
  kept share, net of the process's idle CPU, and decision latency from the acknowledgement of a
  trace's root span to the trace's arrival at the sink.

Requests are laid out as an SDK batching concurrent requests sends them: each scope's spans dealt
out one trace at a time (``loadgen.layout``). Every request carries trace IDs no collector has
seen (each round, the latency phases and the cluster fleets' warm-up have seeds of their own, and
each collector, or fleet of agents, has a buffer of its own, under a key prefix of this run's in
Redis), so no decision cache or pending trace shortcuts the work. End-to-end CPU is counted
until every trace sent has been decided and every span of the kept ones has reached the sink,
polling the admin API over one kept-alive connection. Every process runs with glibc's heap
thresholds pinned (``processes.MALLOC_PINS``).

Modes beside ``memory``, each quoted as a ratio to the memory mode's CPU per span:
- ``memory-contiguous``: the same spans with each trace's spans side by side;
- ``attributes``: the example policies plus a ``string_attribute`` on ``http.route`` and an
  ``ottl_condition`` on span attributes, none of which matches more than the example policies keep, so
  the difference is the cost of reading attributes (end to end only);
- ``wal``: the buffer's write-ahead log (``fsync: interval``); its hold collector also reports the
  log's growth on disk per buffered span against the wire bytes.

The ``redis`` mode runs the same on a Redis server of its own. The ``cluster`` mode starts a
3-master Redis Cluster and measures collector CPU per span end to end with one agent and with three
agents sharing the cluster buffer (each service sending to one of them, so a trace's spans reach
several), round by round, and the ratio of the three agents' summed CPU to the one agent's; a
third fleet, one agent taking the three agents' requests, has their fragments without their
processes, and says how much of the ratio is which.

The ``overload`` mode (``bench_overload``) drives a memory-buffer collector at three times its
sustainable load, with and without overload relief, and samples its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tailsampler.loadgen.batching import Payload
from tailsampler.loadgen.bench_overload import OverloadOptions, run_overload
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import (
    MALLOC_PINS,
    CollectorProcess,
    NullServerProcess,
    ProcessFailed,
    RedisCluster,
    RedisServer,
    collector_config,
    cpu_seconds,
    example_policies,
    rss_bytes,
)
from tailsampler.loadgen.sink import Sink
from tailsampler.loadgen.traffic import (
    TrafficConfig,
    TrafficResult,
    build_payloads,
    run_traffic,
    send_payloads,
)
from tailsampler.loadgen.transport import GrpcTransport


@dataclasses.dataclass(frozen=True)
class _Mode:
    """What one buffer mode runs: its buffer, the layout of its requests, its policies, and
    whether it measures ingest and memory (decisions held) and decision latency."""

    buffer: str = "memory"  # memory, wal or redis
    layout: str = "interleaved"
    attribute_policies: bool = False
    hold: bool = True
    latency: bool = True


_BUFFER_MODES = {
    "memory": _Mode(),
    "memory-contiguous": _Mode(layout="contiguous", latency=False),
    "attributes": _Mode(attribute_policies=True, hold=False, latency=False),
    "wal": _Mode(buffer="wal"),
    "redis": _Mode(buffer="redis"),
}
MODES = (*_BUFFER_MODES, "cluster", "overload")
_TO_MEMORY = ("memory-contiguous", "attributes", "wal")  # quoted as a ratio to the memory mode
_SLOW_THRESHOLD_MS = 1000
CLUSTER_AGENTS = 3
# the cluster mode's fleets: label, agents, request streams (``build_payloads``' targets)
_CLUSTER_FLEETS = (
    ("1_agent", 1, 1),
    ("1_agent_spread", 1, CLUSTER_AGENTS),
    (f"{CLUSTER_AGENTS}_agents", CLUSTER_AGENTS, CLUSTER_AGENTS),
)


def attribute_policies(slow_threshold_ms: int) -> list[dict[str, Any]]:
    """The example policies and two that read attributes: refunds by route, and deleting database
    statements or server errors. The shop's traffic has no refund route and no DELETE, and its
    server errors are kept already, so these keep nothing more: what they add is reading attributes."""
    return [
        *example_policies(slow_threshold_ms),
        {"name": "refunds", "type": "string_attribute",
         "string_attribute": {"key": "http.route", "values": ["/api/v1/orders/{id}/refund"]}},
        {"name": "deletes-and-server-errors", "type": "ottl_condition",
         "ottl_condition": {"span": ['IsMatch(attributes["db.statement"], "^DELETE ")',
                                     'attributes["http.response.status_code"] >= 500']}},
    ]


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    rounds: int = 5
    spans_per_round: int = 60_000
    batch_spans: int = 512
    concurrency: int = 4
    latency_seconds: float = 3.0
    latency_traces_per_second: float = 100.0
    decision_wait_s: float = 2.0
    after_root_s: float = 0.5
    tick_s: float = 0.1
    modes: tuple[str, ...] = MODES
    workdir: Path | None = None
    profile: bool = False
    overload: OverloadOptions = OverloadOptions()

    @classmethod
    def smoke(cls, **overrides: Any) -> BenchOptions:
        """A few seconds' run that exercises every measurement (for CI). A round is 16,384 spans,
        so that its work stands well above the idle CPU taken off it (the compiled core ingests
        4,096 spans in about 8 ms, where an idle agent spends about 20 ms a second)."""
        return cls(**{"rounds": 1, "spans_per_round": 16384, "latency_seconds": 1.0,
                      "latency_traces_per_second": 60.0,
                      "overload": OverloadOptions(num_traces=200, decision_wait_s=1.0, overload_seconds=4.0),
                      **overrides})

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.spans_per_round < self.batch_spans:
            raise ValueError("bench needs at least 1 round of at least one full request")
        unknown = set(self.modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class _Series(dict[str, list[float]]):
    """Per-round values of each metric; ``medians()`` is what the table quotes."""

    def add(self, name: str, value: float) -> None:
        self.setdefault(name, []).append(value)

    def medians(self) -> dict[str, float | None]:
        return {name: _median(values) for name, values in self.items()}


async def _until(condition: Callable[[], Awaitable[bool]], deadline_s: float, what: str) -> None:
    give_up = time.monotonic() + deadline_s
    while not await condition():
        if time.monotonic() > give_up:
            raise ProcessFailed(f"timed out after {deadline_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclasses.dataclass
class _Fleet:
    """Collector agents sharing one buffer (one agent, except in the cluster mode), the sink they
    export to, their Redis if any, and how many traces have been sent to them so far."""

    agents: list[CollectorProcess]
    sink: Sink
    redis: RedisServer | RedisCluster | None = None
    sent_traces: int = 0
    streams: int = 1  # request streams (payload targets), dealt out over the agents in turn

    @property
    def endpoints(self) -> list[str]:
        """Each request stream's agent: one each, or with fewer agents than streams, shared."""
        return [self.agents[i % len(self.agents)].grpc_endpoint for i in range(max(self.streams, len(self.agents)))]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(agent.pid) for agent in self.agents)


def _traces(payloads: list[Payload]) -> int:
    """Traces in pre-built requests: each has its root span in exactly one."""
    return sum(len(p.roots) for p in payloads)


def _spans_at(sink: Sink) -> int:
    """Distinct spans the sink holds (a retried delivery counts once)."""
    return sum(map(len, sink.spans.values()))


class _Run:
    """One benchmark: the null server, then each mode's collectors."""

    def __init__(self, options: BenchOptions, progress: Progress | None = None) -> None:
        self.options = options
        self._progress = progress
        self._steps = 0
        self._spans = 0
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tailsampler-bench-"))
        self.run_id = os.urandom(4).hex()  # in key prefixes: a REDIS_URL server may hold an earlier run's traces
        self.shape = TrafficShape(slow_threshold_s=_SLOW_THRESHOLD_MS / 1000)
        self.payloads: dict[tuple[str, int], list[list[Payload]]] = {}  # by (layout, agents), then round
        self.null_rates: list[float] = []
        self.null_cpu: list[float] = []
        self.profiles: dict[str, list[dict[str, object]]] = {}

    def _build(self) -> None:
        """Each round's requests, in every layout and agent count a chosen mode sends: the same
        traces for each (seed ``1000 + round``), and different traces from round to round."""
        options = self.options
        wanted = {("interleaved", 1)}
        wanted |= {(_BUFFER_MODES[m].layout, 1) for m in options.modes if m in _BUFFER_MODES}
        if "cluster" in options.modes:
            wanted.add(("interleaved", CLUSTER_AGENTS))
        for layout, agents in sorted(wanted):
            self.payloads[layout, agents] = [
                build_payloads(self.shape, options.spans_per_round, options.batch_spans, seed=1000 + r,
                               layout=layout, targets=agents)
                for r in range(options.rounds)
            ]

    async def run(self) -> dict[str, Any]:
        options = self.options
        self._build()
        first = self.payloads["interleaved", 1][0]
        spans = sum(p.spans for p in first)
        wire = sum(len(p.data) for p in first)
        null = await NullServerProcess(self.workdir / "null").start()
        modes: dict[str, Any] = {}
        try:
            for mode in options.modes:
                try:
                    if mode == "overload":
                        modes[mode] = await run_overload(
                            options.overload, self.shape, self.workdir / "overload", _SLOW_THRESHOLD_MS, null.endpoint
                        )
                    elif mode == "cluster":
                        modes[mode] = await self._cluster()
                    else:
                        modes[mode] = await self._mode(mode, null)
                except ProcessFailed as exc:
                    modes[mode] = {"available": False, "reason": str(exc)[:2000]}
        finally:
            await null.stop()
        _ratios_to_memory(modes)
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "options": {**{k: (str(v) if isinstance(v, Path) else v)
                           for k, v in dataclasses.asdict(options).items()},
                        "layout": "interleaved", "malloc": dict(MALLOC_PINS), "cluster_agents": CLUSTER_AGENTS},
            "wire_bytes_per_span": wire / spans,
            "spans_per_round": spans,
            "null_server": {"spans_per_second": self.null_rates, "median": _median(self.null_rates),
                            "cpu_us_per_span": self.null_cpu, "cpu_median": _median(self.null_cpu)},
            "modes": modes,
        }
        if self.profiles:
            result["profile"] = self.profiles
        result["targets"] = targets(result, options)
        return result

    def _step(self, spans: int, doing: str) -> None:
        """One round of one mode has sent its spans."""
        self._spans += spans
        self._steps += 1
        if self._progress is not None:
            self._progress(self._steps, self._spans, doing)

    async def _null_rate(self, null: NullServerProcess, payloads: list[Payload]) -> float:
        cpu0 = cpu_seconds(null.pid)
        sent = await self._send([null.endpoint], payloads)
        rate = sent.spans / sent.elapsed_s
        self.null_rates.append(rate)
        self.null_cpu.append((cpu_seconds(null.pid) - cpu0) / sent.spans * 1e6)
        return rate

    async def _send(self, endpoints: list[str], payloads: list[Payload]) -> TrafficResult:
        transport = GrpcTransport(endpoints)
        try:
            sent = await send_payloads(payloads, transport, self.options.concurrency)
        finally:
            await transport.close()
        if sent.failed_requests or sent.rejected_spans:
            raise ProcessFailed(f"{', '.join(endpoints)} refused spans: {sent.summary()}")
        return sent

    async def _mode(self, mode: str, null: NullServerProcess) -> dict[str, Any]:
        spec = _BUFFER_MODES[mode]
        series = _Series()
        rounds = self.payloads[spec.layout, 1]
        if spec.hold:
            await self._hold_rounds(mode, spec, rounds, null, series)
        await self._e2e_rounds(mode, spec, rounds, series)
        return {"available": True, "rounds": dict(series), "median": series.medians()}

    @contextlib.asynccontextmanager
    async def _fleet(
        self, name: str, buffer_type: str, policies: list[dict[str, Any]], wait_s: float, after_root_s: float,
        agents: int = 1, cluster: RedisCluster | None = None, streams: int = 1, **tail_sampling: Any,
    ) -> AsyncIterator[_Fleet]:
        """A sink and ``agents`` collectors exporting to it, with a buffer of their own: memory,
        memory with a write-ahead log, a Redis server started here, or ``cluster`` under a key
        prefix of their own, taking ``streams`` request streams. All stopped after."""
        workdir = self.workdir / name
        async with contextlib.AsyncExitStack() as stack:
            sink = Sink()
            endpoint = await sink.start()
            stack.push_async_callback(sink.stop)
            buffer: dict[str, Any] = {"tick": f"{self.options.tick_s}s"}
            redis: RedisServer | RedisCluster | None = cluster
            if buffer_type == "wal":
                buffer["wal"] = {"dir": str(self._wal_dir(name)), "fsync": "interval"}
            elif buffer_type == "redis":
                redis = await RedisServer(workdir / "redis").start()
                stack.push_async_callback(redis.stop)
                buffer.update(type="redis", url=redis.url, key_prefix=f"ts-{name}-{self.run_id}")
            elif cluster is not None:
                buffer.update(type="redis", url=cluster.url, cluster=True, key_prefix=f"ts-{name}-{self.run_id}")
            fleet = _Fleet([], sink, redis, streams=streams)
            for index in range(agents):
                config = collector_config(endpoint, policies, f"{wait_s}s", f"{after_root_s}s", buffer, **tail_sampling)
                agent = name if agents == 1 else f"{name}-agent{index}"
                agent_dir = self.workdir / agent
                profile_to = agent_dir / "collector.prof" if self.options.profile else None
                collector = await CollectorProcess(config, agent_dir, profile_to).start()
                stack.push_async_callback(self._stop_collector, agent, collector)
                fleet.agents.append(collector)
            yield fleet

    def _wal_dir(self, fleet: str) -> Path:
        """Where a fleet's write-ahead log goes: a directory of this run's, so that a reused
        ``--workdir`` replays no earlier run's traces or decisions."""
        return self.workdir / fleet / f"wal-{self.run_id}"

    async def _stop_collector(self, name: str, collector: CollectorProcess) -> None:
        await collector.stop(timeout=60.0)
        if collector.profile_to is not None and collector.profile_to.exists():
            self.profiles[name] = profile_summary(collector.profile_to)

    def _policies(self, spec: _Mode) -> list[dict[str, Any]]:
        return (attribute_policies if spec.attribute_policies else example_policies)(_SLOW_THRESHOLD_MS)

    async def _hold_rounds(
        self, mode: str, spec: _Mode, rounds: list[list[Payload]], null: NullServerProcess, series: _Series,
    ) -> None:
        """Ingest throughput and memory per buffered span, decisions held off."""
        hold = 3600.0
        wal = self._wal_dir(f"{mode}-hold")
        async with self._fleet(
            f"{mode}-hold", spec.buffer, [{"name": "all", "type": "always_sample"}], hold, hold,
            drop_pending_traces_on_shutdown=True,
        ) as fleet:
            (collector,), redis = fleet.agents, fleet.redis
            for payloads in rounds:
                null_rate = await self._null_rate(null, payloads)
                spans = sum(p.spans for p in payloads)
                wire = sum(len(p.data) for p in payloads)
                rss0, cpu0 = rss_bytes(collector.pid), cpu_seconds(collector.pid)
                used0 = await redis.used_memory() if redis else 0
                disk0 = _disk_bytes(wal)
                sent = await self._send(fleet.endpoints, payloads)
                self._step(sent.spans, f"{mode}: ingest and memory")
                rate = sent.spans / sent.elapsed_s
                series.add("ingest_spans_per_second", rate)
                series.add("ingest_ratio_to_null", rate / null_rate)
                series.add("ingest_cpu_us_per_span", (cpu_seconds(collector.pid) - cpu0) / spans * 1e6)
                rss = (rss_bytes(collector.pid) - rss0) / spans
                series.add("rss_bytes_per_buffered_span", rss)
                series.add("rss_to_wire_bytes", rss / (wire / spans))
                if redis:
                    used = (await redis.used_memory() - used0) / spans
                    series.add("redis_used_memory_per_buffered_span", used)
                    series.add("redis_used_memory_to_wire_bytes", used / (wire / spans))
                if spec.buffer == "wal":
                    disk = (_disk_bytes(wal) - disk0) / spans
                    series.add("wal_disk_bytes_per_buffered_span", disk)
                    series.add("wal_disk_to_wire_bytes", disk / (wire / spans))

    async def _e2e_rounds(self, mode: str, spec: _Mode, rounds: list[list[Payload]], series: _Series) -> None:
        """CPU per span from ingest to export, then (if the mode says so) decision latency under
        paced traffic."""
        options = self.options
        async with self._fleet(
            f"{mode}-e2e", spec.buffer, self._policies(spec), options.decision_wait_s, options.after_root_s,
        ) as fleet:
            idle = await self._idle_rates(fleet)
            for index, payloads in enumerate(rounds):
                cpu, redis_cpu = await self._e2e_cpu(fleet, payloads, idle, f"{mode}: end to end")
                series.add("collector_cpu_us_per_span", cpu)
                if fleet.redis:
                    series.add("redis_cpu_us_per_span", redis_cpu)
                if spec.latency:
                    latencies = await self._latency(fleet, seed=2000 + index)
                    series.add("decision_latency_p50_s", _percentile(latencies, 0.50))
                    series.add("decision_latency_p99_s", _percentile(latencies, 0.99))
                    series.add("decision_latency_samples", len(latencies))

    async def _e2e_cpu(
        self, fleet: _Fleet, payloads: list[Payload], idle: tuple[float, float], doing: str,
    ) -> tuple[float, float]:
        """Collector and Redis CPU per span (µs) to take one round's requests, decide every trace
        and export the kept ones, net of their idle CPU over that time."""
        idle_cpu, idle_redis = idle
        cpu0, redis0, t0 = fleet.cpu_seconds(), await _redis_cpu(fleet.redis), time.monotonic()
        sent = await self._send(fleet.endpoints, payloads)
        self._step(sent.spans, doing)
        await self._drain(fleet, _traces(payloads))
        elapsed = time.monotonic() - t0
        cpu = fleet.cpu_seconds() - cpu0 - idle_cpu * elapsed
        redis_cpu = await _redis_cpu(fleet.redis) - redis0 - idle_redis * elapsed
        return max(cpu, 0.0) / sent.spans * 1e6, max(redis_cpu, 0.0) / sent.spans * 1e6

    async def _cluster(self) -> dict[str, Any]:
        """One agent, one agent taking ``CLUSTER_AGENTS`` agents' requests, and ``CLUSTER_AGENTS``
        agents on one Redis Cluster, each fleet under a key prefix of its own, measured one after
        the other in every round on the same traces. The middle fleet parts the two costs of
        spreading a trace over agents: its fragments (a trace arrives in several), which it pays
        too, and running as several processes, which it does not."""
        options = self.options
        series = _Series()
        async with contextlib.AsyncExitStack() as stack:
            cluster = await RedisCluster(self.workdir / "cluster" / "redis").start()
            stack.push_async_callback(cluster.stop)
            fleets = {
                label: await stack.enter_async_context(self._fleet(
                    f"cluster-{label}", "cluster", example_policies(_SLOW_THRESHOLD_MS),
                    options.decision_wait_s, options.after_root_s, agents=agents, cluster=cluster, streams=streams,
                ))
                for label, agents, streams in _CLUSTER_FLEETS
            }
            for fleet in fleets.values():
                await self._warm_up(fleet)
            idle = {label: await self._idle_rates(fleet) for label, fleet in fleets.items()}
            for index in range(options.rounds):
                cpu: dict[str, float] = {}
                for label, fleet in fleets.items():
                    cpu[label], redis_cpu = await self._e2e_cpu(
                        fleet, self.payloads["interleaved", fleet.streams][index], idle[label],
                        f"cluster: {label.replace('_', ' ')}")
                    series.add(f"collector_cpu_us_per_span_{label}", cpu[label])
                    series.add(f"redis_cpu_us_per_span_{label}", redis_cpu)
                one = cpu["1_agent"]
                series.add("cpu_agents_to_1_agent", cpu[f"{CLUSTER_AGENTS}_agents"] / one if one else 0.0)
                series.add("cpu_1_agent_spread_to_1_agent", cpu["1_agent_spread"] / one if one else 0.0)
        return {"available": True, "rounds": dict(series), "median": series.medians()}

    async def _warm_up(self, fleet: _Fleet) -> None:
        """Send a tenth of a round of traces of their own (seed 3000) through the fleet and wait
        until they are decided and exported, uncounted: each agent's first requests pay for
        what a process does once (connections to Redis and the sink, its resource cache, code
        run for the first time), which would weigh three times on three agents' first round."""
        options = self.options
        payloads = build_payloads(self.shape, max(2 * options.batch_spans, options.spans_per_round // 10),
                                  options.batch_spans, seed=3000, layout="interleaved", targets=fleet.streams)
        await self._send(fleet.endpoints, payloads)
        await self._drain(fleet, _traces(payloads))

    async def _idle_rates(self, fleet: _Fleet) -> tuple[float, float]:
        """CPU seconds per second the agents (and Redis) spend with no traffic: ticks, polls."""
        cpu0, redis0, t0 = fleet.cpu_seconds(), await _redis_cpu(fleet.redis), time.monotonic()
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - t0
        return (fleet.cpu_seconds() - cpu0) / elapsed, (await _redis_cpu(fleet.redis) - redis0) / elapsed

    async def _drain(self, fleet: _Fleet, traces: int) -> None:
        """Until the agents have decided every trace sent to them (``traces`` more than before)
        and the sink holds every span of the kept ones. Nothing can be due before the after-root
        wait has passed, so the admin API is first asked then, and then every 0.1 s."""
        options = self.options
        fleet.sent_traces += traces
        deadline = options.decision_wait_s + 60.0
        await asyncio.sleep(options.after_root_s + options.tick_s)

        async def decided() -> bool:
            stats = [await agent.admin.stats() for agent in fleet.agents]
            done = sum(s["traces"]["kept"] + s["traces"]["dropped"] for s in stats)
            return done >= fleet.sent_traces and all(s["buffer"]["traces"] == 0 for s in stats)

        await _until(decided, deadline, f"the collector to decide all {fleet.sent_traces} traces sent to it")
        kept = sum([await agent.admin.counter("tailsampler_spans_decided", decision="kept") for agent in fleet.agents])

        async def exported() -> bool:
            return _spans_at(fleet.sink) >= kept

        await _until(exported, deadline, f"the sink to receive all {kept:.0f} spans of the kept traces")

    async def _latency(self, fleet: _Fleet, seed: int) -> list[float]:
        options = self.options
        traffic = TrafficConfig(
            targets=tuple(fleet.endpoints),
            traces_per_second=options.latency_traces_per_second,
            duration_s=options.latency_seconds,
            shape=dataclasses.replace(self.shape, error_ratio=0.5),  # half are kept, so timed at the sink
            batch_spans=options.batch_spans,
            flush_interval_s=0.05,
            seed=seed,
        )
        sent = await run_traffic(traffic, track_roots=True)
        await self._drain(fleet, sent.traces)
        sink = fleet.sink
        latencies = [sink.first_seen[t] - acked for t, acked in sent.root_acked.items() if t in sink.first_seen]
        if not latencies:
            raise ProcessFailed("no kept trace reached the sink during the latency phase")
        return latencies


async def _redis_cpu(redis: RedisServer | RedisCluster | None) -> float:
    return await redis.cpu_seconds() if redis else 0.0


def _disk_bytes(directory: Path) -> int:
    """Bytes of the write-ahead log's segment files (0 without a log)."""
    return sum(path.stat().st_size for path in directory.glob("*.wal")) if directory.is_dir() else 0


def _ratios_to_memory(modes: dict[str, Any]) -> None:
    """The CPU per span of each mode that varies the memory mode as a share of the memory
    mode's, when both ran."""
    memory = modes.get("memory", {}).get("median")
    for mode in _TO_MEMORY:
        median = modes.get(mode, {}).get("median")
        if not (median and memory):
            continue
        for metric in ("collector_cpu_us_per_span", "ingest_cpu_us_per_span"):
            if median.get(metric) and memory.get(metric):
                median[metric.replace("_us_per_span", "_to_memory")] = median[metric] / memory[metric]


def targets(result: dict[str, Any], options: BenchOptions) -> dict[str, dict[str, Any]]:
    """The benchmark targets from the issue, each with the measured median and whether it is met."""
    bound = options.after_root_s + 2 * options.tick_s
    wanted = [
        ("memory", "ingest_ratio_to_null", ">=", 1.0, "ingest >= 1.0x null server (memory)"),
        ("memory", "collector_cpu_us_per_span", "<=", 3.0, "collector CPU <= 3 us/span (memory)"),
        ("redis", "collector_cpu_us_per_span", "<=", 5.0, "collector CPU <= 5 us/span (redis)"),
        ("redis", "redis_cpu_us_per_span", "<=", 1.5, "Redis CPU <= 1.5 us/span"),
        ("memory", "rss_to_wire_bytes", "<=", 1.2, "RSS <= 1.2x wire bytes per buffered span"),
        ("redis", "redis_used_memory_to_wire_bytes", "<=", 1.2, "Redis used_memory <= 1.2x wire bytes per buffered span"),
        ("wal", "collector_cpu_to_memory", "<=", 1.15,
         "collector CPU with the write-ahead log <= 1.15x without (end to end, fsync interval)"),
        ("wal", "wal_disk_to_wire_bytes", "<=", 1.2, "write-ahead log on disk <= 1.2x wire bytes per buffered span"),
        ("cluster", "cpu_agents_to_1_agent", "<=", 1.15,
         f"collector CPU per span, {CLUSTER_AGENTS} agents (summed) <= 1.15x 1 agent (end to end, Redis Cluster)"),
        ("memory", "decision_latency_p99_s", "<=", bound,
         f"decision latency p99 <= {bound:.2f}s (after-root wait + 2 ticks, memory)"),
        ("redis", "decision_latency_p99_s", "<=", bound,
         f"decision latency p99 <= {bound:.2f}s (after-root wait + 2 ticks, redis)"),
        ("overload", "rss_second_half_to_first_half", "<=", 1.2,
         "RSS levels off at 3x the sustainable load (second-half peak <= 1.2x first-half, relief on)"),
        ("overload", "buffer_peak_fill", "<=", 1.0, "buffer within num_traces at 3x the sustainable load (relief on)"),
    ]
    out: dict[str, dict[str, Any]] = {}
    for mode, metric, op, limit, label in wanted:
        measured = result["modes"].get(mode, {}).get("median", {}).get(metric)
        met = None if measured is None else (measured >= limit if op == ">=" else measured <= limit)
        out[label] = {"mode": mode, "metric": metric, "limit": limit, "measured": measured, "met": met}
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def profile_summary(path: Path, top: int = 20) -> list[dict[str, object]]:
    """The functions with the largest own time in a cProfile dump, as shares of the total."""
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1.0  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [
        {"function": f"{Path(file).name}:{line}:{name}", "own_share": round(tt / total, 4),
         "cumulative_share": round(ct / total, 4), "calls": nc}
        for (file, line, name), (_, nc, tt, ct, _) in rows
    ]


Progress = Callable[[float, int, str], None]  # steps done, spans sent, what runs now


def bench_steps(options: BenchOptions) -> int:
    """The steps a run reports: each round of each buffer mode, held (if it holds) and end to
    end, and each round of the cluster mode with each fleet."""
    per_round = sum(1 + _BUFFER_MODES[m].hold for m in options.modes if m in _BUFFER_MODES)
    return options.rounds * (per_round + len(_CLUSTER_FLEETS) * ("cluster" in options.modes))


async def run_bench(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    return await _Run(options, progress).run()
