"""OTLP/HTTP export (protobuf): POST the kept bytes as they are to ``/v1/traces``."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
from email.utils import parsedate_to_datetime

import aiohttp
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .base import ExporterSetupError, KeptTrace
from .delivery import Delivered, SendFailed
from .specs import OtlpHttpSpec
from .tls import read_pem

RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_PROTOBUF = "application/x-protobuf"


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_message(body: bytes, content_type: str) -> str:
    if content_type.startswith(_PROTOBUF):
        try:
            return status_pb2.Status.FromString(body).message
        except DecodeError:
            pass
    return body[:200].decode("utf-8", "replace")


class OtlpHttpSink:
    def __init__(self, name: str, spec: OtlpHttpSpec) -> None:
        self._name = name
        self._spec = spec
        self._headers = {"Content-Type": _PROTOBUF, **spec.headers}
        if spec.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self._spec.tls
        ca = read_pem(self._name, "ca_file", tls.ca_file)
        if ca is None and tls.cert_file is None and not tls.insecure_skip_verify:
            return None
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file and tls.key_file:
            try:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ExporterSetupError(
                    f"exporter {self._name}: cert_file/key_file {tls.cert_file!r}, {tls.key_file!r}: {exc}"
                ) from None
        return context

    async def open(self) -> None:
        context = self._ssl_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
            timeout=aiohttp.ClientTimeout(total=float(self._spec.timeout)),
        )

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        assert self._session is not None, "send() before open()"
        body = b"".join(t.data for t in batch)
        if self._spec.compression == "gzip":
            body = await asyncio.to_thread(gzip.compress, body, 6)
        try:
            async with self._session.post(
                self._spec.url, data=body, headers=self._headers, server_hostname=self._spec.tls.server_name_override
            ) as response:
                payload = await response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "")
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}", retryable=True, reason="connection") from None
        if 200 <= status < 300:
            try:
                partial = ExportTraceServiceResponse.FromString(payload).partial_success
            except DecodeError:
                return Delivered()
            return Delivered(partial.rejected_spans, partial.error_message)
        raise SendFailed(
            f"HTTP {status}: {_error_message(payload, content_type)}",
            retryable=status in RETRYABLE_HTTP,
            reason=f"http_{status}",
            retry_after=retry_after if status in RETRYABLE_HTTP else None,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
