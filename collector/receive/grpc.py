"""OTLP/gRPC ``TraceService/Export`` on grpcio's asyncio server.

The method is registered with a raw-bytes deserializer so the body is parsed exactly once, by the
ingest's split, and a body that does not parse gets INVALID_ARGUMENT instead of an opaque
internal error.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tailsampler.collector.ingest import Ingest
from tailsampler.common.endpoints import Endpoint

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _retry_trailer(message: str, seconds: float) -> tuple[tuple[str, bytes], ...]:
    """A google.rpc.Status with RetryInfo, as OTLP clients read retry hints from it."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=max(1, round(seconds))))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


class GrpcReceiver:
    def __init__(self, ingest: Ingest, endpoint: Endpoint, max_recv_msg_size_mib: float) -> None:
        self._ingest = ingest
        self._endpoint = endpoint
        self._max = int(max_recv_msg_size_mib * 1024 * 1024)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, reuse_port: bool = False) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=None,
                    response_serializer=ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(self._endpoint.listen_address)
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {self._endpoint}")
        await self._server.start()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:
        outcome = await self._ingest.accept(body, "grpc")
        if outcome.status == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.message)
        if outcome.status == "unavailable":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, outcome.message,
                trailing_metadata=_retry_trailer(outcome.message, outcome.retry_after),
            )
        return outcome.response()
