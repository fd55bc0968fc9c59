"""OTLP/HTTP ``POST /v1/traces`` on aiohttp: protobuf or JSON, optionally gzip, answered in kind.

Every error body is a ``google.rpc.Status`` in the request's own encoding, as the OTLP
specification asks; only 503 (buffer full or unavailable) invites a retry, with Retry-After.
"""

from __future__ import annotations

import math
import zlib

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from tailsampler.collector.ingest import Ingest, Outcome
from tailsampler.common.endpoints import Endpoint
from tailsampler.common.otlp_json import JsonDecodeError, request_from_json, to_json

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"

# google.rpc.Code values
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8
_UNAVAILABLE = 14


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


class HttpReceiver:
    def __init__(self, ingest: Ingest, endpoint: Endpoint, max_request_body_size_mib: float) -> None:
        self._ingest = ingest
        self._endpoint = endpoint
        self._max = int(max_request_body_size_mib * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, reuse_port: bool = False) -> None:
        app = web.Application(client_max_size=self._max)
        app.router.add_post("/v1/traces", self._export)
        # bodies are inflated here, not by aiohttp, which takes a truncated gzip stream as empty
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._endpoint.listen_host, self._endpoint.port, reuse_port=reuse_port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self, grace: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(status: int, code: int, message: str, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
        body = _encode(status_pb2.Status(code=code, message=message), content_type)
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    async def _export(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type not in (_PROTOBUF, _JSON):
            return self._error(
                415, _INVALID_ARGUMENT,
                f"unsupported content type {content_type!r}: send {_PROTOBUF} or {_JSON}", _PROTOBUF,
            )
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return self._error(415, _INVALID_ARGUMENT, f"unsupported content encoding {encoding!r}", content_type)
        try:
            body = _inflate(await request.read(), encoding, self._max)
        except (web.HTTPRequestEntityTooLarge, _TooLarge):
            return self._error(
                413, _RESOURCE_EXHAUSTED, f"request body exceeds {self._max} bytes after decompression", content_type
            )
        except zlib.error as exc:
            return self._error(400, _INVALID_ARGUMENT, f"cannot decompress {encoding} body: {exc}", content_type)
        if content_type == _JSON:
            try:
                body = request_from_json(body).SerializeToString()
            except JsonDecodeError as exc:
                return self._answer(Outcome.not_a_request(exc), content_type)
        return self._answer(await self._ingest.accept(body, "http"), content_type)

    def _answer(self, outcome: Outcome, content_type: str) -> web.Response:
        if outcome.status == "invalid":
            return self._error(400, _INVALID_ARGUMENT, outcome.message, content_type)
        if outcome.status == "unavailable":
            retry_after = str(max(1, math.ceil(outcome.retry_after)))
            return self._error(503, _UNAVAILABLE, outcome.message, content_type, {"Retry-After": retry_after})
        return web.Response(status=200, body=_encode(outcome.response(), content_type), content_type=content_type)
