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

The ``wal`` mode is the memory mode with the buffer's write-ahead log (``fsync: interval``): its
hold collector also reports the log's growth on disk per buffered span against the wire bytes,
and its CPU per span is quoted beside the memory mode's, as a ratio.

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
    CollectorProcess,
    NullServerProcess,
    ProcessFailed,
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

MODES = ("memory", "wal", "redis", "overload")
_SLOW_THRESHOLD_MS = 1000


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
        """A few seconds' run that exercises every measurement (for CI)."""
        return cls(**{"rounds": 1, "spans_per_round": 4096, "latency_seconds": 1.0,
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


class _Run:
    """One benchmark: the null server, then each buffer type's hold and e2e collectors."""

    def __init__(self, options: BenchOptions, progress: Progress | None = None) -> None:
        self.options = options
        self._progress = progress
        self._steps = 0
        self._spans = 0
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tailsampler-bench-"))
        self.shape = TrafficShape(slow_threshold_s=_SLOW_THRESHOLD_MS / 1000)
        self.payloads: list[list[Payload]] = []
        self.null_rates: list[float] = []
        self.null_cpu: list[float] = []
        self.profiles: dict[str, list[dict[str, object]]] = {}

    async def run(self) -> dict[str, Any]:
        options = self.options
        self.payloads = [
            build_payloads(self.shape, options.spans_per_round, options.batch_spans, seed=1000 + r)
            for r in range(options.rounds)
        ]
        spans = sum(p.spans for p in self.payloads[0])
        wire = sum(len(p.data) for p in self.payloads[0])
        null = await NullServerProcess(self.workdir / "null").start()
        modes: dict[str, Any] = {}
        try:
            for mode in options.modes:
                try:
                    if mode == "overload":
                        modes[mode] = await run_overload(
                            options.overload, self.shape, self.workdir / "overload", _SLOW_THRESHOLD_MS, null.endpoint
                        )
                        continue
                    modes[mode] = await self._mode(mode, null)
                except ProcessFailed as exc:
                    modes[mode] = {"available": False, "reason": str(exc)[:2000]}
        finally:
            await null.stop()
        _wal_ratios(modes)
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "options": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in dataclasses.asdict(options).items()},
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
        sent = await self._send(null.endpoint, payloads)
        rate = sent.spans / sent.elapsed_s
        self.null_rates.append(rate)
        self.null_cpu.append((cpu_seconds(null.pid) - cpu0) / sent.spans * 1e6)
        return rate

    async def _send(self, endpoint: str, payloads: list[Payload], track_roots: bool = False) -> TrafficResult:
        transport = GrpcTransport([endpoint])
        try:
            sent = await send_payloads(payloads, transport, self.options.concurrency, track_roots)
        finally:
            await transport.close()
        if sent.failed_requests or sent.rejected_spans:
            raise ProcessFailed(f"{endpoint} refused spans: {sent.summary()}")
        return sent

    async def _mode(self, mode: str, null: NullServerProcess) -> dict[str, Any]:
        series = _Series()
        await self._hold_rounds(mode, null, series)
        await self._e2e_rounds(mode, series)
        return {"available": True, "rounds": dict(series), "median": series.medians()}

    @contextlib.asynccontextmanager
    async def _collector_with_sink(
        self, mode: str, role: str, policies: list[dict[str, Any]], wait_s: float, after_root_s: float,
        **tail_sampling: Any,
    ) -> AsyncIterator[tuple[CollectorProcess, RedisServer | None, Sink]]:
        """A sink, a Redis server in redis mode, and a collector between them; all stopped after."""
        workdir = self.workdir / f"{mode}-{role}"
        async with contextlib.AsyncExitStack() as stack:
            sink = Sink()
            endpoint = await sink.start()
            stack.push_async_callback(sink.stop)
            buffer: dict[str, Any] = {"tick": f"{self.options.tick_s}s"}
            if mode == "wal":
                buffer["wal"] = {"dir": str(workdir / "wal"), "fsync": "interval"}
            redis = None
            if mode == "redis":
                redis = await RedisServer(workdir / "redis").start()
                stack.push_async_callback(redis.stop)
                buffer.update(type="redis", url=redis.url, key_prefix=f"ts-{role}")  # REDIS_URL may be shared
            config = collector_config(endpoint, policies, f"{wait_s}s", f"{after_root_s}s", buffer, **tail_sampling)
            profile_to = workdir / "collector.prof" if self.options.profile else None
            collector = await CollectorProcess(config, workdir, profile_to).start()
            stack.push_async_callback(self._stop_collector, f"{mode}-{role}", collector)
            yield collector, redis, sink

    async def _stop_collector(self, name: str, collector: CollectorProcess) -> None:
        await collector.stop(timeout=60.0)
        if collector.profile_to is not None and collector.profile_to.exists():
            self.profiles[name] = profile_summary(collector.profile_to)

    async def _hold_rounds(self, mode: str, null: NullServerProcess, series: _Series) -> None:
        """Ingest throughput and memory per buffered span, decisions held off."""
        hold = 3600.0
        wal = self.workdir / f"{mode}-hold" / "wal"  # where _collector_with_sink puts the wal mode's log
        async with self._collector_with_sink(
            mode, "hold", [{"name": "all", "type": "always_sample"}], hold, hold,
            drop_pending_traces_on_shutdown=True,
        ) as (collector, redis, _):
            for payloads in self.payloads:
                null_rate = await self._null_rate(null, payloads)
                spans = sum(p.spans for p in payloads)
                wire = sum(len(p.data) for p in payloads)
                rss0, cpu0 = rss_bytes(collector.pid), cpu_seconds(collector.pid)
                used0 = await redis.used_memory() if redis else 0
                disk0 = _disk_bytes(wal)
                sent = await self._send(collector.grpc_endpoint, payloads)
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
                if mode == "wal":
                    disk = (_disk_bytes(wal) - disk0) / spans
                    series.add("wal_disk_bytes_per_buffered_span", disk)
                    series.add("wal_disk_to_wire_bytes", disk / (wire / spans))

    async def _e2e_rounds(self, mode: str, series: _Series) -> None:
        """CPU per span from ingest to export, then decision latency under paced traffic."""
        options = self.options
        async with self._collector_with_sink(
            mode, "e2e", example_policies(_SLOW_THRESHOLD_MS), options.decision_wait_s, options.after_root_s,
        ) as (collector, redis, sink):
            idle_cpu, idle_redis = await self._idle_rates(collector, redis)
            for index, payloads in enumerate(self.payloads):
                cpu0, redis0, t0 = cpu_seconds(collector.pid), await _redis_cpu(redis), time.monotonic()
                sent = await self._send(collector.grpc_endpoint, payloads)
                self._step(sent.spans, f"{mode}: end to end")
                await self._drain(collector, sink)
                elapsed = time.monotonic() - t0
                cpu = cpu_seconds(collector.pid) - cpu0 - idle_cpu * elapsed
                series.add("collector_cpu_us_per_span", max(cpu, 0.0) / sent.spans * 1e6)
                if redis:
                    redis_cpu = await _redis_cpu(redis) - redis0 - idle_redis * elapsed
                    series.add("redis_cpu_us_per_span", max(redis_cpu, 0.0) / sent.spans * 1e6)
                latencies = await self._latency(collector, sink, seed=2000 + index)
                series.add("decision_latency_p50_s", _percentile(latencies, 0.50))
                series.add("decision_latency_p99_s", _percentile(latencies, 0.99))
                series.add("decision_latency_samples", len(latencies))

    async def _idle_rates(self, collector: CollectorProcess, redis: RedisServer | None) -> tuple[float, float]:
        """CPU seconds per second the collector (and Redis) spend with no traffic: ticks, polls."""
        cpu0, redis0, t0 = cpu_seconds(collector.pid), await _redis_cpu(redis), time.monotonic()
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - t0
        return (cpu_seconds(collector.pid) - cpu0) / elapsed, (await _redis_cpu(redis) - redis0) / elapsed

    async def _drain(self, collector: CollectorProcess, sink: Sink) -> None:
        """Until every trace is decided and the kept ones have reached the sink."""
        deadline = self.options.decision_wait_s + 60.0

        async def drained() -> bool:
            return await collector.admin.buffered_traces() == 0

        await _until(drained, deadline, "the collector to decide every buffered trace")
        if not await sink.wait_quiet(0.3, deadline):
            raise ProcessFailed("kept traces kept arriving at the sink")

    async def _latency(self, collector: CollectorProcess, sink: Sink, seed: int) -> list[float]:
        options = self.options
        traffic = TrafficConfig(
            targets=(collector.grpc_endpoint,),
            traces_per_second=options.latency_traces_per_second,
            duration_s=options.latency_seconds,
            shape=dataclasses.replace(self.shape, error_ratio=0.5),  # half are kept, so timed at the sink
            batch_spans=options.batch_spans,
            flush_interval_s=0.05,
            seed=seed,
        )
        sent = await run_traffic(traffic, track_roots=True)
        await self._drain(collector, sink)
        latencies = [sink.first_seen[t] - acked for t, acked in sent.root_acked.items() if t in sink.first_seen]
        if not latencies:
            raise ProcessFailed("no kept trace reached the sink during the latency phase")
        return latencies


async def _redis_cpu(redis: RedisServer | None) -> float:
    return await redis.cpu_seconds() if redis else 0.0


def _disk_bytes(directory: Path) -> int:
    """Bytes of the write-ahead log's segment files (0 without a log)."""
    return sum(path.stat().st_size for path in directory.glob("*.wal")) if directory.is_dir() else 0


def _wal_ratios(modes: dict[str, Any]) -> None:
    """The wal mode's CPU per span as a share of the memory mode's, when both ran."""
    wal, memory = (modes.get(m, {}).get("median") for m in ("wal", "memory"))
    if wal and memory:
        for metric in ("collector_cpu_us_per_span", "ingest_cpu_us_per_span"):
            if wal.get(metric) and memory.get(metric):
                wal[metric.replace("_us_per_span", "_to_memory")] = wal[metric] / memory[metric]


def targets(result: dict[str, Any], options: BenchOptions) -> dict[str, dict[str, Any]]:
    """The benchmark targets from the issue, each with the measured median and whether it is met."""
    bound = options.after_root_s + 2 * options.tick_s
    wanted = [
        ("memory", "ingest_ratio_to_null", ">=", 0.5, "ingest >= 0.5x null server (memory)"),
        ("memory", "collector_cpu_us_per_span", "<=", 4.0, "collector CPU <= 4 us/span (memory)"),
        ("redis", "collector_cpu_us_per_span", "<=", 8.0, "collector CPU <= 8 us/span (redis)"),
        ("memory", "rss_to_wire_bytes", "<=", 1.5, "RSS <= 1.5x wire bytes per buffered span"),
        ("wal", "collector_cpu_to_memory", "<=", 1.15,
         "collector CPU with the write-ahead log <= 1.15x without (end to end, fsync interval)"),
        ("wal", "wal_disk_to_wire_bytes", "<=", 1.2, "write-ahead log on disk <= 1.2x wire bytes per buffered span"),
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
    """The steps a run reports: each mode's rounds, held and end to end."""
    return len(options.modes) * options.rounds * 2


async def run_bench(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    return await _Run(options, progress).run()
