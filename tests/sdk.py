"""The OpenTelemetry Python SDK, unmodified, as the client: real OTLP exporters over gRPC or HTTP.

Every span also goes to an in-memory exporter, so a test can compare what tailsampler forwarded
with exactly what the SDK sent.
"""

from __future__ import annotations

import os
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags


class SdkClient:
    """A TracerProvider exporting to a collector, plus a record of every span it ended."""

    def __init__(self, transport: str, endpoint: str, service: str = "checkout", id_generator: IdGenerator | None = None) -> None:
        if transport == "grpc":
            exporter = GrpcSpanExporter(endpoint=endpoint, insecure=True)
        else:
            exporter = HttpSpanExporter(endpoint=f"http://{endpoint}/v1/traces")
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=id_generator)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        self.tracer = self.provider.get_tracer("tailsampler.tests")

    def flush(self) -> None:
        assert self.provider.force_flush(10_000), "the SDK could not export its spans"

    def shutdown(self) -> None:
        self.provider.shutdown()

    def sent(self) -> dict[str, list[ReadableSpan]]:
        out: dict[str, list[ReadableSpan]] = {}
        for span in self.memory.get_finished_spans():
            out.setdefault(f"{span.context.trace_id:032x}", []).append(span)
        return out

    def sent_as_otlp(self, trace_id: str) -> list[Span]:
        """The spans of one trace exactly as the SDK's OTLP encoder puts them on the wire."""
        request = encode_spans(self.sent()[trace_id])
        return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def remote_parent(trace_id: str) -> trace.Context:
    """A context that continues ``trace_id``, as a span arriving from another service would."""
    span_context = SpanContext(
        int(trace_id, 16), int.from_bytes(os.urandom(8), "big"), is_remote=True, trace_flags=TraceFlags(1)
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))

