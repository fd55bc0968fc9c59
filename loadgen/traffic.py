"""Paced OTLP traffic: traces drawn from the model, batched, sent by concurrent workers.

The run is bounded by a duration or a trace count and stops by itself. It records what it sent
(the ledger the quality report compares against the sink) and when each trace's root request
was acknowledged (the start of the decision-latency clock).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tailsampler.common.otlp_json import to_json
from tailsampler.loadgen.batching import Batcher, Payload
from tailsampler.loadgen.layout import LAYOUTS, interleaved
from tailsampler.loadgen.model import Trace, TraceGenerator, TrafficShape
from tailsampler.loadgen.transport import PROTOCOLS, Transport, loopback_endpoint, make_transport


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """The knobs of one traffic run; rates and bounds are checked up front."""

    targets: tuple[str, ...] = ("127.0.0.1:4317",)
    protocol: str = "grpc"
    compress: bool = False
    traces_per_second: float | None = 100.0
    spans_per_second: float | None = None
    duration_s: float | None = 10.0
    count: int | None = None
    shape: TrafficShape = field(default_factory=TrafficShape)
    batch_spans: int = 512
    concurrency: int = 4
    seed: int = 1
    late_ratio: float = 0.0
    late_delay_s: float = 1.0
    flush_interval_s: float = 0.2

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("at least one target is required")
        object.__setattr__(self, "targets", tuple(loopback_endpoint(t) for t in self.targets))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if (self.traces_per_second is None) == (self.spans_per_second is None):
            raise ValueError("give exactly one of traces-per-second and spans-per-second")
        if (self.rate or 0) <= 0:
            raise ValueError("the rate must be positive")
        if (self.duration_s is None) == (self.count is None):
            raise ValueError("give exactly one of duration and count")
        if self.duration_s is not None and not 0 < self.duration_s <= 86400:
            raise ValueError(f"duration must be between 0 and 1 day, got {self.duration_s}s")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0.0 <= self.late_ratio <= 1.0:
            raise ValueError(f"late-ratio must be between 0 and 1, got {self.late_ratio}")
        if self.late_delay_s < 0 or self.flush_interval_s <= 0:
            raise ValueError("late-delay must be >= 0 and flush-interval > 0")

    @property
    def rate(self) -> float:
        return self.traces_per_second or self.spans_per_second or 0.0


@dataclass(frozen=True, slots=True)
class SentTrace:
    """Ground truth for one sent trace."""

    span_count: int
    error: bool
    slow: bool


@dataclass
class TrafficResult:
    traces: int = 0
    spans: int = 0
    requests: int = 0
    wire_bytes: int = 0
    failed_requests: int = 0
    failed_spans: int = 0
    rejected_spans: int = 0
    retries: int = 0
    late_spans: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    ledger: dict[bytes, SentTrace] = field(default_factory=dict)
    root_acked: dict[bytes, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "traces": self.traces, "spans": self.spans, "requests": self.requests,
            "wire_bytes": self.wire_bytes, "failed_requests": self.failed_requests,
            "failed_spans": self.failed_spans, "rejected_spans": self.rejected_spans,
            "retries": self.retries, "late_spans": self.late_spans,
            "elapsed_s": round(self.elapsed_s, 3),
            "spans_per_second": round(self.spans / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "errors": self.errors[:5],
        }


class _Sender:
    """Workers that drain a bounded queue of requests and account for every answer."""

    def __init__(self, transport: Transport, concurrency: int, result: TrafficResult,
                 track_roots: bool) -> None:
        self._transport = transport
        self._result = result
        self._track_roots = track_roots
        self._queue: asyncio.Queue[Payload | None] = asyncio.Queue(maxsize=concurrency * 2)
        self._workers = [asyncio.create_task(self._work()) for _ in range(concurrency)]

    async def put(self, payload: Payload) -> None:
        await self._queue.put(payload)

    async def finish(self) -> None:
        for _ in self._workers:
            await self._queue.put(None)
        await asyncio.gather(*self._workers)

    async def abandon(self) -> None:
        """Stop the workers without sending what is queued (the run failed)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        result = self._result
        while (payload := await self._queue.get()) is not None:
            outcome = await self._transport.export(payload.target, payload.data)
            result.requests += 1
            result.retries += outcome.attempts - 1
            result.wire_bytes += len(payload.data)
            if outcome.error:
                result.failed_requests += 1
                result.failed_spans += payload.spans
                if len(result.errors) < 20:
                    result.errors.append(outcome.error)
                continue
            result.rejected_spans += outcome.rejected_spans
            if self._track_roots and payload.roots:
                now = time.monotonic()
                for trace_id in payload.roots:
                    result.root_acked[trace_id] = now


async def send_payloads(payloads: list[Payload], transport: Transport, concurrency: int,
                        track_roots: bool = False) -> TrafficResult:
    """Send pre-built requests as fast as ``concurrency`` allows (the benchmark's client)."""
    result = TrafficResult()
    started = time.perf_counter()
    sender = _Sender(transport, concurrency, result, track_roots)
    for payload in payloads:
        await sender.put(payload)
    await sender.finish()
    result.elapsed_s = time.perf_counter() - started
    result.spans = sum(p.spans for p in payloads)
    return result


class _Producer:
    """Turns traces into requests: pacing, batching, late spans held back past their root."""

    def __init__(self, config: TrafficConfig, emit: Callable[[Payload], Awaitable[None]]) -> None:
        self.config = config
        self._emit = emit
        self._rng_late = random.Random(config.seed + 1)
        self.batcher = Batcher(len(config.targets), config.batch_spans)
        self._held: dict[bytes, list[tuple[int, bytes]]] = {}
        self._delayed: deque[tuple[float, int, bytes]] = deque()

    async def add_trace(self, trace: Trace, now: float) -> int:
        """Batch a trace's spans; returns how many were held back as late spans."""
        full, held = self.batcher.add_trace(trace, self._pick_late if self.config.late_ratio else None)
        if held:
            self._held[trace.trace_id] = held
        for payload in full:
            await self._push(payload, now)
        return len(held)

    def _pick_late(self) -> bool:
        return self._rng_late.random() < self.config.late_ratio

    async def _push(self, payload: Payload, now: float) -> None:
        due = now + self.config.late_delay_s
        for trace_id in payload.roots:
            for service, framed in self._held.pop(trace_id, ()):
                self._delayed.append((due, service, framed))
        if self.config.protocol == "http/json":
            payload.data = to_json(ExportTraceServiceRequest.FromString(payload.data))
        await self._emit(payload)

    async def release_late(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, service, framed = self._delayed.popleft()
            payload = self.batcher.add(service, framed)
            if payload is not None:
                await self._push(payload, now)

    async def flush(self, now: float) -> None:
        for payload in self.batcher.flush():
            await self._push(payload, now)

    @property
    def pending_late(self) -> bool:
        return bool(self._held or self._delayed)

    def next_late_due(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None


_WATCH_INTERVAL = 0.25
Watch = Callable[[TrafficResult, float], None]  # the run so far and the seconds since it started


async def run_traffic(config: TrafficConfig, transport: Transport | None = None,
                      track_roots: bool = False, keep_ledger: bool = True,
                      watch: Watch | None = None) -> TrafficResult:
    """Send paced traffic until the duration or count is reached, then drain late spans.

    ``keep_ledger`` records every trace's ground truth (what the quality report needs); a long
    plain run turns it off so that memory stays flat. ``watch`` is told how the run goes a few
    times a second (a progress bar).
    """
    own_transport = transport is None
    transport = transport or make_transport(config.protocol, list(config.targets), config.compress)
    result = TrafficResult()
    sender = _Sender(transport, config.concurrency, result, track_roots)
    producer = _Producer(config, sender.put)
    generator = TraceGenerator(config.shape, config.seed)
    clock = time.monotonic
    start = clock()
    last_flush = start
    per_span = config.spans_per_second is not None
    units = 0
    last_watch = start
    try:
        while True:
            now = clock()
            if watch is not None and now - last_watch >= _WATCH_INTERVAL:
                watch(result, now - start)
                last_watch = now
            await producer.release_late(now)
            if now - last_flush >= config.flush_interval_s:
                await producer.flush(now)
                last_flush = now
            if config.count is not None and result.traces >= config.count:
                break
            if config.duration_s is not None and now - start >= config.duration_s:
                break
            due = start + units / config.rate
            if due > now:
                await asyncio.sleep(min(due - now, config.flush_interval_s))
                continue
            trace = generator.next_trace(time.time_ns())
            result.late_spans += await producer.add_trace(trace, now)
            if keep_ledger:
                result.ledger[trace.trace_id] = SentTrace(len(trace.spans), trace.error, trace.slow)
            result.traces += 1
            result.spans += len(trace.spans)
            units += len(trace.spans) if per_span else 1
        while producer.pending_late:
            now = clock()
            await producer.flush(now)
            await producer.release_late(now)
            due = producer.next_late_due()
            if due is not None and due > now:
                await asyncio.sleep(due - now)
        await producer.flush(clock())
        await sender.finish()
    finally:
        await sender.abandon()
        if own_transport:
            await transport.close()
    result.elapsed_s = clock() - start
    return result


def build_payloads(shape: TrafficShape, spans: int, batch_spans: int = 512, seed: int = 1, *,
                   layout: str = "contiguous", targets: int = 1) -> list[Payload]:
    """OTLP/protobuf requests for at least ``spans`` spans of whole traces, built ahead of a benchmark.

    ``layout`` orders each scope's spans (``loadgen.layout``); ``targets`` spreads the services
    over that many agents as ``run`` does, so that one trace's spans reach several of them. The
    same seed gives the same traces (IDs, spans, attributes) whatever the layout or targets.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    generator = TraceGenerator(shape, seed)
    batcher = Batcher(targets, batch_spans)
    payloads: list[Payload] = []
    made = 0
    start_ns = time.time_ns()
    while made < spans:
        trace = generator.next_trace(start_ns)
        made += len(trace.spans)
        payloads.extend(batcher.add_trace(trace)[0])
    payloads.extend(batcher.flush())
    if layout == "interleaved":
        for payload in payloads:
            payload.data = interleaved(payload.data)
    return payloads
