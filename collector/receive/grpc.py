"""OTLP/gRPC ``TraceService/Export`` on grpcio's asyncio server.

The method is registered as client-streaming with a raw-bytes deserializer: on the wire a unary
call and a one-message client stream are the same, and a streaming handler runs before the
message is read, so a request without a valid bearer token (UNAUTHENTICATED) or past the
listener's in-flight bounds (UNAVAILABLE with RetryInfo) is refused before it costs memory. The
body is parsed exactly once, by the ingest's split; one that does not parse gets INVALID_ARGUMENT.

grpcio's own bounds do the rest: ``max_concurrent_streams`` per connection,
``max_allowed_incoming_connections``, the handshake timeout and ``max_connection_idle``.
"""

from __future__ import annotations

import errno
import socket

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tailsampler.collector.config import BearerAuthConfig, GrpcReceiverConfig
from tailsampler.collector.ingest import Ingest
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.receive.auth import BearerTokens, guards
from tailsampler.collector.receive.limits import RETRY_AFTER, InFlight
from tailsampler.collector.receive.listener import raise_open_files_limit
from tailsampler.common.endpoints import Endpoint

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _retry_trailer(message: str, seconds: float) -> tuple[tuple[str, bytes], ...]:
    """A google.rpc.Status with RetryInfo, as OTLP clients read retry hints from it."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=max(1, round(seconds))))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message, details=[detail])
    # the status details are where the gRPC spec puts it; the OpenTelemetry SDKs read the bare
    # RetryInfo trailer as well
    return (("grpc-status-details-bin", status.SerializeToString()), ("google.rpc.retryinfo-bin", info.SerializeToString()))


def _check_bindable(endpoint: Endpoint, reuse_port: bool) -> None:
    """Bind the address once before grpcio does, so that a port in use is one clear OSError
    rather than grpcio's RuntimeError and its own log lines."""
    if endpoint.port == 0:
        return
    try:
        addresses = socket.getaddrinfo(endpoint.listen_host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen for otlp/grpc on {endpoint}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # that address family is not set up here (localhost without ::1): grpcio skips it too
                raise OSError(f"cannot listen for otlp/grpc on {endpoint}: {exc.strerror}") from None


class GrpcReceiver:
    def __init__(
        self, ingest: Ingest, settings: GrpcReceiverConfig, metrics: Metrics, auth: BearerAuthConfig | None = None
    ) -> None:
        self._ingest = ingest
        self._settings = settings
        self._metrics = metrics
        self._auth_config = auth
        self._auth: BearerTokens | None = None
        self._max = int(settings.max_recv_msg_size_mib * 1024 * 1024)
        self.in_flight = InFlight(settings.max_requests_in_flight, int(settings.max_bytes_in_flight_mib * 1024 * 1024))
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, reuse_port: bool = False) -> None:
        settings = self._settings
        self._auth, tls = guards(
            "otlp/grpc", settings.endpoint, self._auth_config, "receivers.otlp.auth", settings.tls, "receivers.otlp.grpc.tls",
        )
        raise_open_files_limit("otlp/grpc", settings.max_connections)
        _check_bindable(settings.endpoint, reuse_port)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                ("grpc.max_allowed_incoming_connections", settings.max_connections),
                ("grpc.server_handshake_timeout_ms", int(float(settings.handshake_timeout) * 1000)),
                ("grpc.max_connection_idle_ms", int(float(settings.idle_timeout) * 1000)),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "Export": grpc.stream_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=None,
                    response_serializer=ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        address = settings.endpoint.listen_address
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, tls.grpc_credentials())
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for otlp/grpc on {settings.endpoint}")
        await self._server.start()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    async def _export(self, requests: object, context: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:
        metrics = self._metrics
        if self._auth is not None and not self._auth.allows(_authorization(context)):
            metrics.requests.labels("grpc", "unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization: Bearer <token>)")
        ticket = self.in_flight.admit()
        if ticket is None:
            metrics.requests.labels("grpc", "in_flight_limit").inc()
            await self._busy(context, "too many requests in flight on this listener; retry later")
        assert ticket is not None
        try:
            body = await context.read()
            if body is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no ExportTraceServiceRequest")
            if not ticket.hold(len(body)):
                metrics.requests.labels("grpc", "in_flight_limit").inc()
                await self._busy(context, "too many bytes in flight on this listener; retry later")
            outcome = await self._ingest.accept(body, "grpc", lambda: _waiting(context))
        finally:
            ticket.release()
        if outcome.status == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.message)
        if outcome.status == "unavailable":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, outcome.message,
                trailing_metadata=_retry_trailer(outcome.message, outcome.retry_after),
            )
        return outcome.response()

    @staticmethod
    async def _busy(context: grpc.aio.ServicerContext, message: str) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message, trailing_metadata=_retry_trailer(message, RETRY_AFTER))


def _waiting(context: grpc.aio.ServicerContext) -> bool:
    """Whether the client still waits: the call is not cancelled and its deadline not past."""
    remaining = context.time_remaining()
    return not context.cancelled() and (remaining is None or remaining > 0)


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None
