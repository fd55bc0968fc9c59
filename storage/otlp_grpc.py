"""OTLP/gRPC export: the kept bytes go out as they are, through a generic unary call whose request
serializer is the identity, so nothing is parsed or re-encoded on the way."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .base import KeptTrace
from .delivery import Delivered, SendFailed
from .specs import OtlpSpec
from .tls import read_pem

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

# The OTLP specification's retryable codes; RESOURCE_EXHAUSTED only when the server sent RetryInfo.
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def retry_delay(trailing_metadata: object) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in a failed call's status details, in seconds."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToTimedelta().total_seconds()
    return None


class OtlpGrpcSink:
    def __init__(self, name: str, spec: OtlpSpec) -> None:
        self._name = name
        self._spec = spec
        self._metadata = tuple((key.lower(), value) for key, value in spec.headers.items())
        self._compression = grpc.Compression.Gzip if spec.compression == "gzip" else grpc.Compression.NoCompression
        self._channel: grpc.aio.Channel | None = None
        self._export: grpc.aio.UnaryUnaryMultiCallable | None = None

    async def open(self) -> None:
        tls = self._spec.tls
        if tls.insecure:
            self._channel = grpc.aio.insecure_channel(self._spec.endpoint)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read_pem(self._name, "ca_file", tls.ca_file),
                private_key=read_pem(self._name, "key_file", tls.key_file),
                certificate_chain=read_pem(self._name, "cert_file", tls.cert_file),
            )
            options = [("grpc.ssl_target_name_override", tls.server_name_override)] if tls.server_name_override else []
            self._channel = grpc.aio.secure_channel(self._spec.endpoint, credentials, options=options)
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        assert self._export is not None, "send() before open()"
        body = batch[0].data if len(batch) == 1 else b"".join(t.data for t in batch)
        try:
            response = await self._export(
                body,
                timeout=float(self._spec.timeout),
                metadata=self._metadata,
                compression=self._compression,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            hint = retry_delay(exc.trailing_metadata())
            retryable = code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None)
            raise SendFailed(
                f"{code.name}: {exc.details()}", retryable=retryable, reason=code.name.lower(), retry_after=hint
            ) from None
        partial = response.partial_success
        return Delivered(partial.rejected_spans, partial.error_message)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
