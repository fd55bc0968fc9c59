"""``tailsampler-loadgen bench --modes overload``: three times the sustainable load, with and
without overload relief, and what the collector's memory does meanwhile.

The sustainable load of a buffer is what it holds for one decision wait: ``num_traces`` new traces
every ``decision_wait`` (the byte bound is set well above what those traces take, so the trace
bound is the one that binds). Paced traffic at three times that runs for ``overload_seconds``
into two memory-buffer collectors in turn, the example policies on both, one with
``tail_sampling.overload`` and one without; kept traces go to the null server, a process of its
own, so that what is kept costs the traffic generator nothing. Every 0.2 s the collector's RSS, the buffer's fill and
whether relief is on are sampled; afterwards the stats say how traces were decided.

Bounded means the RSS levels off: the peak of the second half of the run is compared with the peak
of the first half, and the peak with the idle RSS before the traffic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import CollectorProcess, collector_config, example_policies, rss_bytes
from tailsampler.loadgen.traffic import TrafficConfig, run_traffic

_SAMPLE_EVERY = 0.2
_OVERLOAD = {"activate_at": "90%", "deactivate_at": "75%", "sampling_percentage": 10, "min_duration": "2s"}


@dataclasses.dataclass(frozen=True)
class OverloadOptions:
    num_traces: int = 1000
    decision_wait_s: float = 5.0
    overload_seconds: float = 30.0
    times_sustainable: float = 3.0
    concurrency: int = 8
    tick_s: float = 0.1

    @property
    def sustainable_traces_per_second(self) -> float:
        return self.num_traces / self.decision_wait_s


async def _sample(collector: CollectorProcess, until: asyncio.Event, samples: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    while not until.is_set():
        stats = await collector.admin.stats()
        samples.append({
            "t": time.monotonic() - started,
            "rss": rss_bytes(collector.pid),
            "traces": stats["buffer"]["traces"],
            "relief": stats["overload_relief"]["active"],
        })
        try:
            await asyncio.wait_for(until.wait(), _SAMPLE_EVERY)
        except TimeoutError:
            pass


async def _run(
    options: OverloadOptions, shape: TrafficShape, workdir: Path, relief: bool, slow_ms: int, sink: str
) -> dict[str, Any]:
    extra: dict[str, Any] = {"overload": _OVERLOAD} if relief else {}
    config = collector_config(
        sink, example_policies(slow_ms), f"{options.decision_wait_s}s", "0s",
        {"tick": f"{options.tick_s}s", "max_bytes": 1024**3}, num_traces=options.num_traces, **extra,
    )
    collector = await CollectorProcess(config, workdir).start()
    try:
        await asyncio.sleep(1.0)
        idle = rss_bytes(collector.pid)
        rate = options.times_sustainable * options.sustainable_traces_per_second
        traffic = TrafficConfig(
            targets=(collector.grpc_endpoint,), traces_per_second=rate, duration_s=options.overload_seconds,
            shape=shape, concurrency=options.concurrency, flush_interval_s=0.05, seed=4242,
        )
        done = asyncio.Event()
        samples: list[dict[str, Any]] = []
        sampler = asyncio.create_task(_sample(collector, done, samples))
        sent = await run_traffic(traffic, keep_ledger=False)
        done.set()
        await sampler
        stats = await collector.admin.stats()
    finally:
        await collector.stop(timeout=60.0)
    half = options.overload_seconds / 2
    first = max((s["rss"] for s in samples if s["t"] < half), default=idle)
    second = max((s["rss"] for s in samples if s["t"] >= half), default=first)
    traces = stats["traces"]
    decided = traces["kept"] + traces["dropped"]
    by_policy = traces["by_policy"]
    at_once = sum(sum(by_policy.get(p, {}).values()) for p in ("overload_relief", "overload_relief_error"))
    return {
        "offered_traces_per_second": rate,
        "sent_traces_per_second": sent.traces / sent.elapsed_s,
        "sent_spans_per_second": sent.spans / sent.elapsed_s,
        "refused_spans": sent.failed_spans + sent.rejected_spans,
        "rss_idle_bytes": idle,
        "rss_peak_bytes": max(first, second),
        "rss_second_half_to_first_half": second / first,
        "buffer_peak_fill": max((s["traces"] for s in samples), default=0) / options.num_traces,
        "relief_active_share": sum(1 for s in samples if s["relief"]) / max(1, len(samples)),
        "decided_at_once_share": at_once / max(1, decided),
        "decided_early_share": traces["early"].get("overflow", 0) / max(1, decided),
    }


async def run_overload(
    options: OverloadOptions, shape: TrafficShape, workdir: Path, slow_ms: int, sink: str
) -> dict[str, Any]:
    """The ``overload`` mode's result: ``median`` holds the relief run's figures and, prefixed
    ``without_relief_``, the other run's (one run each, so each is its own median); kept traces
    go to the OTLP server at ``sink``."""
    with_relief = await _run(options, shape, workdir / "relief-on", True, slow_ms, sink)
    without = await _run(options, shape, workdir / "relief-off", False, slow_ms, sink)
    median = {**with_relief, **{f"without_relief_{k}": v for k, v in without.items()}}
    median["sustainable_traces_per_second"] = options.sustainable_traces_per_second
    return {"available": True, "options": dataclasses.asdict(options), "median": median}
