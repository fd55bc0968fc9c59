"""The path every export request takes, whatever its transport: split, buffer, forward late spans.

Both receivers call ``Ingest.accept`` and only translate the ``Outcome`` to their wire:
accepted (with refused spans as ``partial_success``), invalid (not an OTLP request), or
unavailable (buffer full or unreachable: a retryable error, so the client keeps the spans and
nothing accepted is lost).

Under overload relief the buffer decides new traces at once; their verdicts travel the same way
as the decision loop's (counted, recorded, forwarded, remembered for late spans). What ingest
forwards itself is reported to the buffer once every exporter has it (``Deliveries``), so that a
buffer with a log delivers it again after a restart if it was not.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tailsampler.collector.buffer import BufferFull, BufferUnavailable, Settlement, TraceBuffer
from tailsampler.collector.deliveries import Deliveries, Delivery
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.overload import OverloadRelief
from tailsampler.collector import wire
from tailsampler.collector.wire import Fragment
from tailsampler.common.verdict import Verdict


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one export request.

    ``accepted``: buffered (``rejected_spans`` of its spans refused for invalid IDs, said in
    ``message``); ``invalid``: not an ExportTraceServiceRequest, nothing taken; ``unavailable``:
    nothing taken now, try again after ``retry_after`` seconds.
    """

    status: Literal["accepted", "invalid", "unavailable"]
    message: str = ""
    rejected_spans: int = 0
    retry_after: float = 0.0

    @classmethod
    def not_a_request(cls, reason: object) -> "Outcome":
        return cls("invalid", f"request is not an ExportTraceServiceRequest: {reason}")

    def response(self) -> ExportTraceServiceResponse:
        """The OTLP answer to an accepted request: ``partial_success`` only when spans were refused."""
        response = ExportTraceServiceResponse()
        if self.rejected_spans:
            response.partial_success.rejected_spans = self.rejected_spans
            response.partial_success.error_message = self.message
        return response


class Ingest:
    def __init__(self, buffer: TraceBuffer, forwarder: Forwarder, metrics: Metrics, overload: OverloadRelief) -> None:
        self._buffer = buffer
        self._forwarder = forwarder
        self._metrics = metrics
        self._overload = overload
        self._deliveries = Deliveries(buffer)

    async def accept(self, body: bytes, transport: str, waiting: Callable[[], bool] = lambda: True) -> Outcome:
        """Take an ExportTraceServiceRequest body: buffer its spans, forward those of traces
        already kept, count those of traces already dropped.

        ``waiting`` says whether the client still waits for the answer. A request whose client
        gave up (its deadline passed, it hung up) is not buffered: the client resends it, and
        taking it too would deliver its spans twice. One that the buffer took, or may have taken
        (the call was cancelled mid-append), after the client gave up is counted
        (``accepted_after_deadline``): its resent copy will be a duplicate."""
        metrics = self._metrics
        try:
            split = wire.split(body)
        except wire.WireError as exc:
            metrics.requests.labels(transport, "invalid").inc()
            return Outcome.not_a_request(exc)
        if split.rejected_spans:
            metrics.spans_refused.labels("invalid_id").inc(split.rejected_spans)
        if split.fragments:
            if not waiting():
                metrics.requests.labels(transport, "client_gone").inc()
                return Outcome("unavailable", "the client stopped waiting before the request was taken")
            try:
                result = await self._buffer.append(split.fragments, time.time(), self._overload.relief)
            except asyncio.CancelledError:  # the client gave up mid-append: a shared store may have taken it
                metrics.requests.labels(transport, "accepted_after_deadline").inc()
                raise
            except BufferFull as exc:
                metrics.overflow_refusals.inc()
                metrics.spans_refused.labels("buffer_full").inc(split.span_count)
                metrics.requests.labels(transport, "buffer_full").inc()
                return Outcome("unavailable", exc.reason, retry_after=exc.retry_after)
            except BufferUnavailable as exc:
                metrics.spans_refused.labels("buffer_unavailable").inc(split.span_count)
                metrics.requests.labels(transport, "buffer_unavailable").inc()
                return Outcome("unavailable", f"trace buffer unavailable: {exc}", retry_after=1.0)
            if result.late_dropped_spans:
                metrics.late_spans.labels("dropped").inc(result.late_dropped_spans)
            forwarded: list[Delivery] = []
            for trace_id, verdict in result.late_kept.items():
                fragment = split.fragments[trace_id]
                metrics.late_spans.labels("kept").inc(fragment.span_count)
                done = await self._forwarder.forward(trace_id, fragment.data, verdict, fragment.span_count, late=True)
                forwarded.append((Settlement(trace_id, verdict), done))
            if result.decided_now:
                forwarded += await self._decided_now(result.decided_now, split.fragments)
            self._deliveries.watch(forwarded)
            if result.rescued:
                metrics.overload_rescued.inc(result.rescued)
            metrics.spans_received.labels(transport).inc(split.span_count)
            metrics.received_bytes.labels(transport).inc(len(body))
            services = metrics.services
            for resource, roots in split.root_resources.items():
                metrics.service_traces_received.labels(services.of_field(resource)).inc(roots)
        if not waiting():
            metrics.requests.labels(transport, "accepted_after_deadline").inc()
        metrics.requests.labels(transport, "partial" if split.rejected_spans else "ok").inc()
        return Outcome("accepted", split.error_message, split.rejected_spans)

    async def _decided_now(self, verdicts: dict[bytes, Verdict], fragments: dict[bytes, Fragment]) -> list[Delivery]:
        """Count and forward the traces overload relief decided at once."""
        metrics = self._metrics
        self._overload.decided += len(verdicts)
        traces: Counter[Verdict] = Counter(verdicts.values())
        spans: Counter[bool] = Counter()
        forwarded: list[Delivery] = []
        for trace_id, verdict in verdicts.items():
            fragment = fragments[trace_id]
            spans[verdict.keep] += fragment.span_count
            if verdict.keep:
                done = await self._forwarder.forward(trace_id, fragment.data, verdict, fragment.span_count)
                forwarded.append((Settlement(trace_id, verdict), done))
        for verdict, count in traces.items():
            metrics.traces_decided.labels("kept" if verdict.keep else "dropped", verdict.policy or "").inc(count)
        for keep, count in spans.items():
            metrics.spans_decided.labels("kept" if keep else "dropped").inc(count)
        return forwarded

    async def settled(self) -> None:
        """Wait until what ingest forwarded is reported delivered (or cut short) to the buffer."""
        await self._deliveries.settled()
