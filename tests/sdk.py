"""The OpenTelemetry Python SDK, unmodified, as the client: real OTLP exporters over gRPC or HTTP.

Every span also goes to an in-memory exporter, so a test can compare what tailsampler forwarded
with exactly what the SDK sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags


@dataclass(frozen=True)
class ClientTls:
    """What an SDK exporter trusts (``ca``) and, for mutual TLS, the certificate it presents."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class SdkClient:
    """A TracerProvider exporting to a collector, plus a record of every span it ended.

    With ``tls`` the exporter speaks TLS (https:// for HTTP); ``headers`` go with every export
    (``{"authorization": "Bearer ..."}``). With ``batch=False`` nothing is sent in the background:
    ``send_now()`` exports the ended spans once and says whether the collector took them."""

    def __init__(
        self,
        transport: str,
        endpoint: str,
        service: str = "checkout",
        id_generator: IdGenerator | None = None,
        *,
        tls: ClientTls | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        batch: bool = True,
    ) -> None:
        if transport == "grpc":
            credentials = None
            if tls is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=tls.ca.read_bytes(),
                    private_key=tls.key.read_bytes() if tls.key else None,
                    certificate_chain=tls.cert.read_bytes() if tls.cert else None,
                )
            exporter = GrpcSpanExporter(
                endpoint=endpoint, insecure=tls is None, credentials=credentials, headers=headers, timeout=timeout
            )
        else:
            # requests lets REQUESTS_CA_BUNDLE from the environment override the exporter's own
            # certificate_file; a session that ignores the environment keeps what the test says
            session = requests.Session()
            session.trust_env = False
            exporter = HttpSpanExporter(
                endpoint=f"{'https' if tls else 'http'}://{endpoint}/v1/traces",
                session=session,
                certificate_file=str(tls.ca) if tls else None,
                client_certificate_file=str(tls.cert) if tls and tls.cert else None,
                client_key_file=str(tls.key) if tls and tls.key else None,
                headers=headers,
                timeout=timeout,
            )
        self.exporter = exporter
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=id_generator)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        if batch:
            self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        self.tracer = self.provider.get_tracer("tailsampler.tests")
        self._sent = 0

    def flush(self) -> None:
        assert self.provider.force_flush(10_000), "the SDK could not export its spans"

    def send_now(self) -> bool:
        """Export the spans ended since the last call, in the caller's thread; True when the
        collector accepted them."""
        spans = self.memory.get_finished_spans()[self._sent :]
        self._sent += len(spans)
        return self.exporter.export(spans) == SpanExportResult.SUCCESS

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

