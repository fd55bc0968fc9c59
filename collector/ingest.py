"""The path every export request takes, whatever its transport: split, buffer, forward late spans.

Both receivers call ``Ingest.accept`` and only translate its outcome to their wire: a result with
refused spans becomes ``partial_success``; ``BufferFull`` / ``BufferUnavailable`` become retryable
errors, so the client keeps the spans and nothing accepted is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tailsampler.collector.buffer import BufferFull, BufferUnavailable, TraceBuffer
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.split import split_body
from tailsampler.policies import Verdict


@dataclass(frozen=True, slots=True)
class Accepted:
    rejected_spans: int
    error_message: str


class Ingest:
    def __init__(self, buffer: TraceBuffer, forwarder: Forwarder, metrics: Metrics) -> None:
        self._buffer = buffer
        self._forwarder = forwarder
        self._metrics = metrics

    async def accept(self, body: bytes, transport: str) -> Accepted:
        """Take an ExportTraceServiceRequest body; one that is not valid raises ``DecodeError``
        before anything is buffered."""
        metrics = self._metrics
        split = split_body(body)
        if split.rejected_spans:
            metrics.spans_refused.labels("invalid_id").inc(split.rejected_spans)
        if split.fragments:
            try:
                result = await self._buffer.append(split.fragments, time.time())
            except BufferFull:
                metrics.overflow_refusals.inc()
                metrics.spans_refused.labels("buffer_full").inc(split.span_count)
                metrics.requests.labels(transport, "buffer_full").inc()
                raise
            except BufferUnavailable:
                metrics.spans_refused.labels("buffer_unavailable").inc(split.span_count)
                metrics.requests.labels(transport, "buffer_unavailable").inc()
                raise
            if result.late_dropped_spans:
                metrics.late_spans.labels("dropped").inc(result.late_dropped_spans)
            for trace_id, data in result.late_kept.items():
                span_count = split.fragments[trace_id].span_count
                metrics.late_spans.labels("kept").inc(span_count)
                verdict = Verdict(True, result.late_kept_policy.get(trace_id))
                await self._forwarder.forward(trace_id, data, verdict, span_count, late=True)
            metrics.spans_received.labels(transport).inc(split.span_count)
        metrics.requests.labels(transport, "partial" if split.rejected_spans else "ok").inc()
        return Accepted(split.rejected_spans, split.error_message)
