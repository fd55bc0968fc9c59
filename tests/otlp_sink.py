"""Real OTLP receivers for tests: a grpcio aio server and an aiohttp server on free ports that
record every export request and can be told to fail, so exporters are tested against the wire.

Use the fixtures ``otlp_grpc_sink`` and ``otlp_http_sink`` (this module is a pytest plugin).
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc
import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.waiting import eventually as wait_for

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


@dataclass(frozen=True)
class ServerTls:
    """A self-signed certificate for ``localhost`` / ``127.0.0.1`` that is also its own CA, so
    one file serves as server certificate, client certificate and trust root; or, with
    ``client_ca``, a certificate whose clients must present one signed by that CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def trusted_clients(self) -> Path:
        return self.client_ca or self.cert

    @classmethod
    def create(cls, directory: Path) -> "ServerTls":
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )
        return cls(cert, key)


@dataclass
class Failure:
    """One injected failure: a gRPC status code name (``UNAVAILABLE``) or an HTTP status."""

    code: str | int
    retry_after: float | None = None
    message: str = "injected failure"


class _Recorder:
    """What both sinks share: the recorded requests and the failure schedule."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.attempts = 0
        self.attempt_times: list[float] = []  # time.monotonic() of every request, failed or not
        self.failures: deque[Failure] = deque()
        self.partial_success: tuple[int, str] | None = None

    def fail(self, code: str | int, times: int = 1, retry_after: float | None = None, message: str = "") -> None:
        """Answer the next ``times`` requests with ``code`` (and RetryInfo / Retry-After)."""
        self.failures.extend(Failure(code, retry_after, message or "injected failure") for _ in range(times))

    def _next_failure(self, body: bytes, headers: dict[str, str]) -> Failure | None:
        self.attempts += 1
        self.attempt_times.append(time.monotonic())
        if self.failures:
            return self.failures.popleft()
        self.requests.append(body)
        self.headers.append(headers)
        return None

    def _response(self) -> bytes:
        response = ExportTraceServiceResponse()
        if self.partial_success:
            response.partial_success.rejected_spans, response.partial_success.error_message = self.partial_success
        return response.SerializeToString()

    def spans_by_trace(self) -> dict[str, list[Span]]:
        """Every accepted span, grouped by hex trace ID, in arrival order."""
        out: dict[str, list[Span]] = {}
        for body in self.requests:
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.setdefault(span.trace_id.hex(), []).append(span)
        return out

    def span_count(self) -> int:
        return sum(len(spans) for spans in self.spans_by_trace().values())

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0, message: str = "") -> None:
        await wait_for(predicate, timeout, message)


class GrpcSink(_Recorder):
    """``TraceService/Export`` on ``127.0.0.1:<port>``; ``endpoint`` is what clients dial.
    With ``tls`` the port speaks TLS and requires a client certificate signed by ``tls.trusted_clients``."""

    def __init__(self, tls: ServerTls | None = None) -> None:
        super().__init__()
        self._tls = tls
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # raw bytes in and out
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
        if self._tls is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(self._tls.key.read_bytes(), self._tls.cert.read_bytes())],
                root_certificates=self._tls.trusted_clients.read_bytes(),
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        headers = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        failure = self._next_failure(body, headers)
        if failure is None:
            return self._response()
        code = grpc.StatusCode[str(failure.code)]
        status = status_pb2.Status(code=code.value[0], message=failure.message)
        if failure.retry_after is not None:
            info = error_details_pb2.RetryInfo(retry_delay=Duration(nanos=int(failure.retry_after * 1e9)))
            status.details.add().Pack(info)
        await context.abort(
            code, failure.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
        )
        raise AssertionError("unreachable")


class HttpSink(_Recorder):
    """``POST /v1/traces`` (protobuf, optionally gzip) on ``http://127.0.0.1:<port>``; a failure's
    ``retry_after`` is sent as whole seconds in ``Retry-After``. With ``tls``: HTTPS that requires
    a client certificate signed by ``tls.trusted_clients``."""

    def __init__(self, tls: ServerTls | None = None) -> None:
        super().__init__()
        self._tls = tls
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self._tls.trusted_clients))
            context.load_cert_chain(self._tls.cert, self._tls.key)
            context.verify_mode = ssl.CERT_REQUIRED
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        failure = self._next_failure(body, dict(request.headers))
        if failure is None:
            return web.Response(body=self._response(), content_type="application/x-protobuf")
        status = status_pb2.Status(code=2, message=failure.message).SerializeToString()
        headers = {} if failure.retry_after is None else {"Retry-After": str(int(failure.retry_after))}
        return web.Response(
            status=int(failure.code), body=status, content_type="application/x-protobuf", headers=headers
        )


@pytest.fixture
async def otlp_grpc_sink() -> AsyncIterator[GrpcSink]:
    sink = GrpcSink()
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


@pytest.fixture
async def otlp_http_sink() -> AsyncIterator[HttpSink]:
    sink = HttpSink()
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
