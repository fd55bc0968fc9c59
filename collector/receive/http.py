"""OTLP/HTTP ``POST /v1/traces`` on aiohttp: protobuf or JSON, optionally gzip, answered in kind.

Every error body is a ``google.rpc.Status`` in the request's own encoding, as the OTLP
specification asks (a client that sent neither protobuf nor JSON gets the message as plain text);
only 503 (buffer full or unavailable, or the listener's in-flight bounds reached) invites a retry,
with Retry-After. A missing or wrong bearer token gets 401 before the body is read.
"""

from __future__ import annotations

import math
import zlib

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from tailsampler.collector.config import BearerAuthConfig, HttpReceiverConfig
from tailsampler.collector.ingest import Ingest, Outcome
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.receive.auth import BearerTokens, guards
from tailsampler.collector.receive.limits import RETRY_AFTER, InFlight
from tailsampler.collector.receive.listener import HttpListener
from tailsampler.common.otlp_json import JsonDecodeError, request_from_json, to_json

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_TEXT = "text/plain"

# google.rpc.Code values
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

_READ_AHEAD = 64 * 1024


class _TooLarge(Exception):
    pass


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip or deflate (zlib) body, refusing one that inflates past ``limit`` bytes
    or that ends before its stream does."""
    if encoding == "identity":
        return body
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise _TooLarge()
    if not inflater.eof:
        raise zlib.error("the compressed stream is truncated")
    return out


def _encode(message: Message, content_type: str) -> bytes:
    return to_json(message) if content_type == _JSON else message.SerializeToString()


def error_response(
    status: int, code: int, message: str, request_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A ``google.rpc.Status`` in the request's encoding; plain text for a client that sent
    neither protobuf nor JSON, which could read neither."""
    if request_type not in (_PROTOBUF, _JSON):
        return web.Response(status=status, text=message, content_type=_TEXT, headers=headers)
    body = _encode(status_pb2.Status(code=code, message=message), request_type)
    return web.Response(status=status, body=body, content_type=request_type, headers=headers)


def _busy(message: str, content_type: str) -> web.Response:
    return error_response(503, _UNAVAILABLE, message, content_type, {"Retry-After": str(math.ceil(RETRY_AFTER))})


class HttpReceiver:
    def __init__(
        self, ingest: Ingest, settings: HttpReceiverConfig, metrics: Metrics, auth: BearerAuthConfig | None = None
    ) -> None:
        self._ingest = ingest
        self._settings = settings
        self._metrics = metrics
        self._auth_config = auth
        self._auth: BearerTokens | None = None
        self._max = int(settings.max_request_body_size_mib * 1024 * 1024)
        self.in_flight = InFlight(settings.max_requests_in_flight, int(settings.max_bytes_in_flight_mib * 1024 * 1024))
        self._listener: HttpListener | None = None
        self.port = 0

    async def start(self, reuse_port: bool = False) -> None:
        settings = self._settings
        self._auth, tls = guards(
            "otlp/http", settings.endpoint, self._auth_config, "receivers.otlp.auth", settings.tls, "receivers.otlp.http.tls",
        )
        app = web.Application(client_max_size=self._max)
        app.router.add_post("/v1/traces", self._export)
        self._listener = HttpListener(
            app, settings.endpoint, "otlp/http",
            max_connections=settings.max_connections,
            read_header_timeout=float(settings.read_header_timeout),
            idle_timeout=float(settings.idle_timeout),
            tls=tls,
            # bodies are inflated here, not by aiohttp, which takes a truncated gzip stream as empty
            auto_decompress=False,
            # what aiohttp reads ahead on each connection before a handler asks (its default,
            # 256 KiB, buffers whole bodies of clients the in-flight bounds are about to refuse)
            read_bufsize=_READ_AHEAD,
        )
        self.port = await self._listener.start(reuse_port)

    async def stop(self, grace: float) -> None:
        if self._listener is not None:
            await self._listener.stop()

    @property
    def open_connections(self) -> int:
        return self._listener.open_connections if self._listener is not None else 0

    async def _export(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if self._auth is not None and not self._auth.allows(request.headers.get("Authorization")):
            self._metrics.requests.labels("http", "unauthenticated").inc()
            return error_response(
                401, _UNAUTHENTICATED, "missing or wrong bearer token (Authorization: Bearer <token>)", content_type,
                {"WWW-Authenticate": "Bearer"},
            )
        if content_type not in (_PROTOBUF, _JSON):
            return error_response(
                415, _INVALID_ARGUMENT, f"unsupported content type {content_type!r}: send {_PROTOBUF} or {_JSON}", content_type
            )
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return error_response(415, _INVALID_ARGUMENT, f"unsupported content encoding {encoding!r}", content_type)
        declared = request.content_length or 0
        if declared > self._max:
            return self._too_large(content_type)
        ticket = self.in_flight.admit(declared)
        if ticket is None:
            self._metrics.requests.labels("http", "in_flight_limit").inc()
            return _busy("too many requests in flight on this listener; retry later", content_type)
        try:
            try:
                raw = await request.read()
                if not ticket.hold(len(raw)):
                    self._metrics.requests.labels("http", "in_flight_limit").inc()
                    return _busy("too many bytes in flight on this listener; retry later", content_type)
                body = _inflate(raw, encoding, self._max)
            except (web.HTTPRequestEntityTooLarge, _TooLarge):
                return self._too_large(content_type)
            except zlib.error as exc:
                return error_response(400, _INVALID_ARGUMENT, f"cannot decompress {encoding} body: {exc}", content_type)
            if body is not raw and not ticket.hold(len(raw) + len(body)):
                self._metrics.requests.labels("http", "in_flight_limit").inc()
                return _busy("too many bytes in flight on this listener; retry later", content_type)
            if content_type == _JSON:
                try:
                    body = request_from_json(body).SerializeToString()
                except JsonDecodeError as exc:
                    return self._answer(Outcome.not_a_request(exc), content_type)
            return self._answer(await self._ingest.accept(body, "http", lambda: _waiting(request)), content_type)
        finally:
            ticket.release()

    def _too_large(self, content_type: str) -> web.Response:
        return error_response(
            413, _RESOURCE_EXHAUSTED, f"request body exceeds {self._max} bytes after decompression", content_type
        )

    def _answer(self, outcome: Outcome, content_type: str) -> web.Response:
        if outcome.status == "invalid":
            return error_response(400, _INVALID_ARGUMENT, outcome.message, content_type)
        if outcome.status == "unavailable":
            retry_after = str(max(1, math.ceil(outcome.retry_after)))
            return error_response(503, _UNAVAILABLE, outcome.message, content_type, {"Retry-After": retry_after})
        return web.Response(status=200, body=_encode(outcome.response(), content_type), content_type=content_type)


def _waiting(request: web.Request) -> bool:
    """Whether the client still waits: its connection is open (HTTP carries no deadline)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()
