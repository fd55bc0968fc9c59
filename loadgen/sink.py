"""OTLP/gRPC servers on the generator's side: the recording sink and the null server.

The sink stands in for the storage backend: it records every span the collector exports (trace
ID, span ID, how often, when a trace first arrived), which is what the quality report and the
decision-latency measurement read. The null server parses each request and answers, nothing
more: the ceiling an OTLP ingest path can be compared with.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_MAX_MESSAGE = 64 * 1024 * 1024
_EMPTY_RESPONSE = b""  # an ExportTraceServiceResponse without partial_success


async def _serve(endpoint: str, handle: Callable[[bytes], None]) -> tuple[grpc.aio.Server, int]:
    """A gRPC server taking raw request bytes; returns it with the port it bound."""

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        handle(request)
        return _EMPTY_RESPONSE

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", _MAX_MESSAGE)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(endpoint)
    if port == 0:
        raise OSError(f"cannot listen on {endpoint}")
    await server.start()
    return server, port


class Sink:
    """Records what arrives; ``spans[trace_id][span_id]`` is the number of deliveries."""

    def __init__(self) -> None:
        self.spans: dict[bytes, dict[bytes, int]] = defaultdict(dict)
        self.first_seen: dict[bytes, float] = {}
        self.requests = 0
        self.span_deliveries = 0
        self.wire_bytes = 0
        self.last_delivery = 0.0
        self.endpoint = ""
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Event()

    async def start(self, endpoint: str = "127.0.0.1:0") -> str:
        self._server, port = await _serve(endpoint, self.record)
        self.endpoint = f"{endpoint.rpartition(':')[0]}:{port}"
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)

    def record(self, body: bytes) -> None:
        """Account for one export request's spans (also usable on bodies read elsewhere)."""
        now = time.monotonic()
        request = ExportTraceServiceRequest.FromString(body)
        first_seen = self.first_seen
        spans = self.spans
        count = 0
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    trace_id = span.trace_id
                    delivered = spans[trace_id]
                    delivered[span.span_id] = delivered.get(span.span_id, 0) + 1
                    if trace_id not in first_seen:
                        first_seen[trace_id] = now
                    count += 1
        self.requests += 1
        self.span_deliveries += count
        self.wire_bytes += len(body)
        self.last_delivery = now
        self._changed.set()

    async def wait_quiet(self, quiet_s: float, deadline_s: float,
                         until: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """Wait until no delivery came for ``quiet_s`` (and ``until()`` holds); False on timeout."""
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(quiet_s, max(0.0, give_up - time.monotonic())))
                continue
            except TimeoutError:
                pass
            if until is None or await until():
                return True
        return False


class NullServer:
    """Parses every request and answers success; the baseline for ingest throughput."""

    def __init__(self) -> None:
        self.requests = 0
        self._server: grpc.aio.Server | None = None

    def _parse(self, body: bytes) -> None:
        ExportTraceServiceRequest.FromString(body)
        self.requests += 1

    async def start(self, endpoint: str = "127.0.0.1:0") -> int:
        self._server, port = await _serve(endpoint, self._parse)
        return port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
