"""Helpers for the storage tests: exporter specs decoded like the config file, kept traces built
the way the receivers build them (split fragments), and an exporter that is started and closed."""

from __future__ import annotations

import contextlib
import os
from typing import Any, AsyncIterator

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from tailsampler.common.settings import decode
from tailsampler.collector import wire
from tailsampler.common.verdict import Verdict
from tailsampler.storage import Exporter, ExporterSpec, KeptTrace, build_exporters

START = 1_700_000_000_000_000_000


def spec(**data: Any) -> ExporterSpec:
    return decode(data, ExporterSpec, "exporters[0]")


def fast_retry(**overrides: Any) -> dict[str, Any]:
    """Retry settings that keep tests quick: tiny backoff, generous budget."""
    return {"initial_interval": "1ms", "max_interval": "5ms", "max_elapsed_time": "10s", **overrides}


def kept(
    spans: int = 3,
    *,
    trace_id: bytes | None = None,
    service: str = "checkout",
    root: bool = True,
    error: bool = False,
    policy: str | None = "baseline",
    late: bool = False,
    start: int = START,
    name: str = "GET /cart",
) -> KeptTrace:
    """A trace whose root (when ``root``) has the other spans as children, 10 ms apart."""
    trace_id = trace_id or os.urandom(16)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    root_id = os.urandom(8)
    for i in range(spans):
        span = ss.spans.add(trace_id=trace_id, span_id=root_id if i == 0 else os.urandom(8), kind=Span.SPAN_KIND_SERVER)
        span.name = name if i == 0 else f"child {i}"
        span.parent_span_id = b"" if (i == 0 and root) else (os.urandom(8) if i == 0 else root_id)
        span.start_time_unix_nano = start + i * 10_000_000
        span.end_time_unix_nano = start + (100 if i == 0 else i * 10 + 5) * 1_000_000
        if error and i == spans - 1:
            span.status.code = Status.STATUS_CODE_ERROR
    fragment = wire.split(request.SerializeToString()).fragments[trace_id]
    return KeptTrace(trace_id, fragment.data, Verdict(True, policy), late=late, span_count=fragment.span_count)


@contextlib.asynccontextmanager
async def running(
    *specs: ExporterSpec, registry: CollectorRegistry | None = None, close_timeout: float = 5.0
) -> AsyncIterator[list[Exporter]]:
    exporters = build_exporters(list(specs), registry or CollectorRegistry())
    for exporter in exporters:
        await exporter.start()
    try:
        yield exporters
    finally:
        for exporter in exporters:
            await exporter.close(close_timeout)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0
