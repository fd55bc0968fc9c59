"""The debug exporter: kept traces written to the log, as the OpenTelemetry Collector's
``debug`` exporter writes them, for trying a config without a backend.

``basic`` logs one line per batch, ``normal`` one line per trace, ``detailed`` one line per
span; ``sampling_initial`` / ``sampling_thereafter`` thin the lines out each second as the
Collector does (the first N, then every Mth).
"""

from __future__ import annotations

import logging
import time

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from .base import KeptTrace
from .delivery import Delivered, count_spans
from .specs import DebugSpec
from .summary import service_name

log = logging.getLogger("tailsampler.debug")


class DebugSink:
    def __init__(self, name: str, spec: DebugSpec) -> None:
        self._name = name
        self._spec = spec
        self._second = 0
        self._lines = 0

    async def open(self) -> None:
        """Nothing to open: the log is always there."""

    def _sampled(self) -> bool:
        """The Collector's log sampling: per second, the first ``sampling_initial`` lines, then
        every ``sampling_thereafter``-th."""
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._lines = second, 0
        self._lines += 1
        initial, thereafter = self._spec.sampling_initial, self._spec.sampling_thereafter
        return self._lines <= initial or (self._lines - initial) % thereafter == 0

    def _emit(self, message: str, *args: object) -> None:
        if self._sampled():
            log.info("%s: " + message, self._name, *args)

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        verbosity = self._spec.verbosity
        if verbosity == "basic":
            spans = sum(t.span_count or count_spans(t.data) for t in batch)
            self._emit("%d kept trace(s), %d span(s)", len(batch), spans)
            return Delivered()
        for trace in batch:
            parsed = TracesData.FromString(trace.data)
            spans = [(rs, span) for rs in parsed.resource_spans for ss in rs.scope_spans for span in ss.spans]
            self._emit(
                "trace %s kept by %s: %d span(s)%s", trace.trace_id.hex(), trace.verdict.policy or "-",
                len(spans), " (late)" if trace.late else "",
            )
            if verbosity == "detailed":
                for rs, span in spans:
                    self._emit(
                        "  span %s parent %s %s: %s %.3f ms status %d", span.span_id.hex(), span.parent_span_id.hex() or "-",
                        service_name(rs.resource), span.name, (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                        span.status.code,
                    )
        return Delivered()

    async def close(self) -> None:
        """Nothing to close."""
