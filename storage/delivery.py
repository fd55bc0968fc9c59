"""Delivery machinery shared by every exporter: bounded queue, batching, retries inside a budget,
circuit breaker and metrics. An exporter type only says how to send one batch (a ``Sink``).

Backpressure instead of loss: ``submit`` waits while the queue is full, so a slow or dead backend
slows the decision loop down (which then applies the buffer's overflow behaviour) rather than
silently discarding kept traces. A batch is given up only for a reason that is counted and logged:
the backend refused it, its retries ran out of time or budget, shutdown came first, or a config
reload removed the exporter.

A backend that is down is one incident in the log: a warning when the circuit opens, a reminder
now and then while it stays open, a line when it closes again; batches given up and partial
successes are incidents too, so a backend refusing everything does not write a line per batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from google.protobuf.message import DecodeError
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client import CollectorRegistry, Counter, Gauge

from tailsampler.common.incident import Incident

from .base import Exporter, KeptTrace
from .specs import CircuitConfig, RetryConfig

log = logging.getLogger("tailsampler.storage")


@dataclass(frozen=True, slots=True)
class Delivered:
    """The backend took the batch; ``rejected_spans`` > 0 is an OTLP partial success (not retried)."""

    rejected_spans: int = 0
    message: str = ""


class SendFailed(Exception):
    """A batch did not reach the backend. ``retry_after`` is the server's hint, in seconds."""

    def __init__(self, message: str, *, retryable: bool, reason: str, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason
        self.retry_after = retry_after


class Sink(Protocol):
    """How one exporter type talks to its backend."""

    async def open(self) -> None: ...

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        """Deliver the batch or raise ``SendFailed``."""
        ...

    async def close(self) -> None: ...


def count_spans(data: bytes) -> int:
    """Span count of a ``TracesData`` body, for traces submitted without one (0 if unparsable:
    the count feeds a metric and must not stop delivery)."""
    try:
        parsed = TracesData.FromString(data)
    except DecodeError:
        return 0
    return sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)


class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures → half-open once ``cooldown``
    has passed, when exactly one probe may go; its success closes, its failure reopens."""

    CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"

    def __init__(
        self,
        config: CircuitConfig,
        on_change: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = config.failure_threshold
        self._cooldown = float(config.cooldown)
        self._on_change = on_change
        self._clock = clock
        self.state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._changed = asyncio.Event()

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._on_change(state)
        self._changed.set()
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        """Wait until a send may go out."""
        while True:
            if self.state == self.CLOSED:
                return
            if self.state == self.OPEN:
                remaining = self._opened_at + self._cooldown - self._clock()
                if remaining > 0:
                    changed = self._changed
                    try:
                        await asyncio.wait_for(changed.wait(), remaining)
                    except TimeoutError:
                        pass
                    continue
                self._probing = False
                self._set(self.HALF_OPEN)
            if not self._probing:
                self._probing = True
                return
            await self._changed.wait()

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set(self.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state == self.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            if self.state == self.OPEN:
                self._changed.set()
                self._changed = asyncio.Event()
            else:
                self._set(self.OPEN)


class RetryBudget:
    """Retries allowed: ``ratio`` of the sends in the last ``window`` seconds, at least
    ``min_retries``. Counts per batch, so the bookkeeping stays small."""

    def __init__(self, config: RetryConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = config.budget_ratio
        self._min = config.budget_min_retries
        self._window = float(config.budget_window)
        self._clock = clock
        self._sends: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self._window
        for events in (self._sends, self._retries):
            while events and events[0] < horizon:
                events.popleft()

    def record_send(self) -> None:
        now = self._clock()
        self._prune(now)
        self._sends.append(now)

    def try_retry(self) -> bool:
        now = self._clock()
        self._prune(now)
        if len(self._retries) >= max(self._min, self._ratio * len(self._sends)):
            return False
        self._retries.append(now)
        return True


class Backoff:
    """Exponential backoff with full jitter; a server's hint replaces the computed delay."""

    def __init__(self, config: RetryConfig) -> None:
        self._initial = float(config.initial_interval)
        self._max = float(config.max_interval)

    def delay(self, attempt: int, hint: float | None) -> float:
        if hint is not None:
            return max(0.0, hint)
        return random.uniform(0.0, min(self._max, self._initial * 2.0**attempt))


class ExporterMetrics:
    """The exporter metrics of one registry, labelled by exporter name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["exporter", *labels], registry=registry)

        self.traces = counter("tailsampler_exporter_traces_exported", "Kept traces delivered")
        self.spans = counter("tailsampler_exporter_spans_exported", "Spans delivered")
        self.rejected_spans = counter(
            "tailsampler_exporter_rejected_spans", "Spans the backend refused in a partial success"
        )
        self.failed_traces = counter(
            "tailsampler_exporter_traces_failed", "Kept traces given up on, by reason", "reason"
        )
        self.send_failures = counter("tailsampler_exporter_send_failures", "Failed send attempts", "reason")
        self.retries = counter("tailsampler_exporter_retries", "Send attempts that were retries")
        self.queue = Gauge(
            "tailsampler_exporter_queue_traces", "Traces waiting in the exporter queue", ["exporter"], registry=registry
        )
        self.queue_capacity = Gauge(
            "tailsampler_exporter_queue_capacity", "Size of the exporter queue", ["exporter"], registry=registry
        )
        self.circuit = Gauge(
            "tailsampler_exporter_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["exporter"],
            registry=registry,
        )

    def forget(self, name: str) -> None:
        """Drop the gauges of an exporter that is gone, so no dashboard shows it as still there."""
        for gauge in (self.queue, self.queue_capacity, self.circuit):
            try:
                gauge.remove(name)
            except KeyError:
                pass


_METRICS: "weakref.WeakKeyDictionary[CollectorRegistry, ExporterMetrics]" = weakref.WeakKeyDictionary()
_CIRCUIT_VALUE = {CircuitBreaker.CLOSED: 0, CircuitBreaker.HALF_OPEN: 1, CircuitBreaker.OPEN: 2}


def metrics_for(registry: CollectorRegistry) -> ExporterMetrics:
    """One set of metric families per registry, however many exporters register on it."""
    found = _METRICS.get(registry)
    if found is None:
        found = _METRICS[registry] = ExporterMetrics(registry)
    return found


class QueuedExporter(Exporter):
    """An ``Exporter`` that feeds one ``Sink`` through the shared delivery machinery."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        queue_size: int,
        batch_max_traces: int,
        batch_max_bytes: int,
        retry: RetryConfig,
        circuit: CircuitConfig,
        consumers: int,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.sink = sink
        self._queue: asyncio.Queue[KeptTrace] = asyncio.Queue(queue_size)
        self._max_traces = batch_max_traces
        self._max_bytes = batch_max_bytes
        self._retry = retry
        self._budget = RetryBudget(retry)
        self._backoff = Backoff(retry)
        self._consumers = consumers
        self._workers: list[asyncio.Task[None]] = []
        self._unresolved = 0
        self._opened = False
        self._started = False
        self._closing = False
        self._gone_for_good = False
        self._last_error: str | None = None
        self._metrics = m = metrics_for(registry)
        self._traces = m.traces.labels(name)
        self._spans = m.spans.labels(name)
        self._rejected = m.rejected_spans.labels(name)
        self._failed = m.failed_traces
        self._send_failures = m.send_failures
        self._retries = m.retries.labels(name)
        self.breaker = CircuitBreaker(circuit, self._circuit_changed)
        self._down = Incident(log, f"exporter {name}")
        self._giving_up = Incident(log, f"exporter {name}: kept traces not delivered")
        self._refused = Incident(log, f"exporter {name}: backend refused spans")

    def _circuit_changed(self, state: str) -> None:
        if state == CircuitBreaker.OPEN:
            self._down.failed(f"circuit open, kept traces wait in the queue (last error: {self._last_error})")
        elif state == CircuitBreaker.CLOSED:
            self._down.resolved()
        else:
            log.debug("exporter %s: circuit half-open, probing the backend", self.name)

    async def open(self) -> None:
        if not self._opened:
            await self.sink.open()
            self._opened = True

    async def start(self) -> None:
        await self.open()
        # the gauges follow this exporter from now on (one that replaces another of its name takes them over)
        m = self._metrics
        m.queue.labels(self.name).set_function(self._queue.qsize)
        m.queue_capacity.labels(self.name).set(self._queue.maxsize)
        m.circuit.labels(self.name).set_function(lambda: _CIRCUIT_VALUE[self.breaker.state])
        self._started = True
        self._workers = [
            asyncio.create_task(self._work(), name=f"exporter-{self.name}-{i}") for i in range(self._consumers)
        ]

    async def submit(self, trace: KeptTrace) -> None:
        if self._closing:
            raise RuntimeError(f"exporter {self.name} is closed")
        self._unresolved += 1
        try:
            await self._queue.put(trace)
        except BaseException:
            self._unresolved -= 1
            raise

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.breaker.state == CircuitBreaker.CLOSED, {
            "circuit": self.breaker.state,
            "queue": self._queue.qsize(),
            "queue_size": self._queue.maxsize,
            "last_error": self._last_error,
        }

    async def close(self, timeout: float, reason: str = "shutdown") -> None:
        self._closing = True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.error(
                "exporter %s: %d kept trace(s) not delivered within %.1fs (%s)",
                self.name,
                self._unresolved,
                timeout,
                reason,
            )
        lost = self._unresolved  # queued or mid-send; workers resolve their batch when cancelled
        # at shutdown the buffer keeps what this cuts short (another agent, or a restart, decides
        # it again); an exporter that a reload took away will never be back for those traces
        self._gone_for_good = reason != "shutdown"
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            _resolve(self._queue.get_nowait(), self._gone_for_good)
        if lost:
            self._failed.labels(self.name, reason).inc(lost)
        if reason == "removed" and self._started:
            self._metrics.forget(self.name)
        if self._opened:
            await self.sink.close()

    async def _work(self) -> None:
        carry: KeptTrace | None = None
        while True:
            batch = [carry if carry is not None else await self._queue.get()]
            carry = None
            size = len(batch[0].data)
            while len(batch) < self._max_traces and not self._queue.empty():
                trace = self._queue.get_nowait()
                if size + len(trace.data) > self._max_bytes:
                    carry = trace
                    break
                batch.append(trace)
                size += len(trace.data)
            finished = False
            try:
                await self._deliver(batch)
                finished = True
            finally:
                self._unresolved -= len(batch)
                for trace in batch:
                    self._queue.task_done()
                    _resolve(trace, finished or self._gone_for_good)

    async def _deliver(self, batch: list[KeptTrace]) -> None:
        """Send until delivered, refused, or out of retry time or budget."""
        deadline = time.monotonic() + self._retry.max_elapsed_time if self._retry.max_elapsed_time else None
        self._budget.record_send()
        attempt = 0
        while True:
            await self.breaker.acquire()
            try:
                outcome = await self._send(batch)
            except SendFailed as exc:
                self._last_error = str(exc)
                self._send_failures.labels(self.name, exc.reason).inc()
                if not exc.retryable:
                    self.breaker.success()  # the backend answered: it is up, the data is the problem
                    return self._give_up(batch, "rejected", exc)
                self.breaker.failure()
                if not self._retry.enabled:
                    return self._give_up(batch, "retry_disabled", exc)
                delay = self._backoff.delay(attempt, exc.retry_after)
                if deadline is not None and time.monotonic() + delay > deadline:
                    return self._give_up(batch, "retries_exhausted", exc)
                attempt += 1
                if self.breaker.state == CircuitBreaker.OPEN:
                    # the backend is down: the batch waits for the circuit (bounded by the
                    # deadline) instead of spending the retry budget, which is for a backend
                    # that is up but failing some requests
                    self._retries.inc()
                    continue
                if not self._budget.try_retry():
                    return self._give_up(batch, "retry_budget", exc)
                self._retries.inc()
                log.debug("exporter %s: retrying in %.2fs after %s", self.name, delay, exc)
                await asyncio.sleep(delay)
                continue
            self.breaker.success()
            self._last_error = None
            self._giving_up.resolved()
            self._traces.inc(len(batch))
            self._spans.inc(sum(t.span_count or count_spans(t.data) for t in batch))
            if outcome.rejected_spans or outcome.message:
                self._rejected.inc(outcome.rejected_spans)
                self._refused.failed(f"{outcome.rejected_spans} span(s) in a partial success: {outcome.message}")
            else:
                self._refused.resolved()
            return None

    async def _send(self, batch: list[KeptTrace]) -> Delivered:
        """The sink's send, with any unexpected error (say, a body that does not parse) turned
        into a refusal: retrying it would fail the same way, and the worker must survive it."""
        try:
            return await self.sink.send(batch)
        except SendFailed:
            raise
        except Exception as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}", retryable=False, reason="exception") from exc

    def _give_up(self, batch: list[KeptTrace], reason: str, exc: SendFailed) -> None:
        self._failed.labels(self.name, reason).inc(len(batch))
        # an unexpected exception in a sink is a bug: its traceback is worth one look
        bug = exc.__cause__ if exc.reason == "exception" and exc.__cause__ is not None else False
        self._giving_up.failed(f"{len(batch)} kept trace(s) ({reason}): {exc}", traceback=bug)


def _resolve(trace: KeptTrace, finished: bool) -> None:
    if trace.done is not None and not trace.done.done():
        trace.done.set_result(finished)
