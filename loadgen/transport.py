"""OTLP clients that send ready-made request bodies: gRPC, HTTP protobuf and HTTP JSON.

Bodies are sent as bytes, never re-encoded, so the generator's cost per span stays far below the
collector's. Retryable answers (gRPC UNAVAILABLE & co., HTTP 429/502/503/504) are retried with
backoff, honouring the server's RetryInfo / Retry-After, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import grpc
import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from tailsampler.storage.otlp_grpc import EXPORT_METHOD, RETRYABLE_GRPC, retry_delay
from tailsampler.storage.otlp_http import RETRYABLE_HTTP

PROTOCOLS = ("grpc", "http/protobuf", "http/json")
_MAX_MESSAGE = 64 * 1024 * 1024


def loopback_endpoint(endpoint: str) -> str:
    """``host:port`` checked to be on this machine: the generator never sends anywhere else."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {endpoint!r}")
    host = host.strip("[]")
    if host == "localhost":
        return f"127.0.0.1:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{endpoint!r}: only loopback addresses (127.0.0.1) are allowed") from None
    if not address.is_loopback or address.version != 4:
        raise ValueError(f"{endpoint!r}: only loopback addresses (127.0.0.1) are allowed")
    return f"{host}:{port}"


@dataclass(slots=True)
class Outcome:
    """The answer to one request after retries: ``error`` is empty on success."""

    rejected_spans: int = 0
    error: str = ""
    attempts: int = 1


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """An answer that retrying cannot change (bad data, unknown method)."""


class Transport(Protocol):
    async def export(self, target: int, body: bytes) -> Outcome: ...

    async def close(self) -> None: ...


class _Retrying:
    """Retry loop shared by both wire protocols; subclasses implement one attempt."""

    def __init__(self, timeout: float, retries: int) -> None:
        self.timeout = timeout
        self.retries = retries

    async def _attempt(self, target: int, body: bytes) -> int:
        raise NotImplementedError

    async def export(self, target: int, body: bytes) -> Outcome:
        backoff = 0.1
        for attempt in range(1, self.retries + 2):
            try:
                return Outcome(rejected_spans=await self._attempt(target, body), attempts=attempt)
            except _Retryable as exc:
                if attempt > self.retries:
                    return Outcome(error=str(exc), attempts=attempt)
                delay = exc.retry_after if exc.retry_after is not None else backoff
                await asyncio.sleep(min(delay, 2.0))
                backoff = min(backoff * 2, 2.0)
            except _Fatal as exc:
                return Outcome(error=str(exc), attempts=attempt)
        raise AssertionError("unreachable")


class GrpcTransport(_Retrying):
    def __init__(self, targets: list[str], timeout: float = 10.0, retries: int = 5) -> None:
        super().__init__(timeout, retries)
        options = [("grpc.max_send_message_length", _MAX_MESSAGE),
                   ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        self._channels = [grpc.aio.insecure_channel(t, options=options) for t in targets]
        self._calls = [
            channel.unary_unary(EXPORT_METHOD, response_deserializer=ExportTraceServiceResponse.FromString)
            for channel in self._channels
        ]

    async def _attempt(self, target: int, body: bytes) -> int:
        try:
            response = await self._calls[target](body, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            message = f"gRPC {exc.code().name}: {exc.details()}"
            if exc.code() in RETRYABLE_GRPC:
                raise _Retryable(message, retry_delay(exc.trailing_metadata())) from None
            raise _Fatal(message) from None
        return response.partial_success.rejected_spans

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class HttpTransport(_Retrying):
    def __init__(self, targets: list[str], json: bool = False, compress: bool = False,
                 timeout: float = 10.0, retries: int = 5) -> None:
        super().__init__(timeout, retries)
        self._urls = [f"http://{t}/v1/traces" for t in targets]
        self._json = json
        self._headers = {"Content-Type": "application/json" if json else "application/x-protobuf"}
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._compress = compress
        self._session: aiohttp.ClientSession | None = None

    async def _attempt(self, target: int, body: bytes) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        data = gzip.compress(body, 1) if self._compress else body
        try:
            async with self._session.post(self._urls[target], data=data, headers=self._headers) as resp:
                content = await resp.read()
                if resp.status == 200:
                    return self._rejected(content)
                message = f"HTTP {resp.status}: {content[:200]!r}"
                if resp.status in RETRYABLE_HTTP:
                    after = resp.headers.get("Retry-After", "")
                    raise _Retryable(message, float(after) if after.isdigit() else None)
                raise _Fatal(message)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise _Retryable(f"HTTP connection failed: {exc!r}", None) from None

    def _rejected(self, content: bytes) -> int:
        if not content:
            return 0
        if self._json:
            partial = msgspec.json.decode(content).get("partialSuccess") or {}
            return int(partial.get("rejectedSpans", 0))
        return ExportTraceServiceResponse.FromString(content).partial_success.rejected_spans

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_transport(protocol: str, targets: list[str], compress: bool = False) -> Transport:
    if protocol == "grpc":
        return GrpcTransport(targets)
    if protocol in ("http/protobuf", "http/json"):
        return HttpTransport(targets, json=protocol == "http/json", compress=compress)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
