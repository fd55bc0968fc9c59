"""Small OTLP payloads built with the protobuf classes, for tests below the SDK level."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tailsampler.collector import wire
from tailsampler.collector.wire import Fragment


def new_trace_id() -> bytes:
    return os.urandom(16)


def request(
    trace_id: bytes,
    spans: int = 1,
    root: bool = False,
    service: str = "checkout",
    error: bool = False,
    duration_ms: int = 10,
    name: str = "GET /cart",
) -> ExportTraceServiceRequest:
    """One resource, one scope, ``spans`` spans of one trace; the first is the root if ``root``."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attr = rs.resource.attributes.add(key="service.name")
    attr.value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    start = 1_700_000_000_000_000_000
    for i in range(spans):
        span = ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), name=f"{name} #{i}", kind=Span.SPAN_KIND_SERVER)
        if not (root and i == 0):
            span.parent_span_id = os.urandom(8)
        span.start_time_unix_nano = start
        span.end_time_unix_nano = start + duration_ms * 1_000_000
        if error:
            span.status.code = Status.STATUS_CODE_ERROR
    return req


def fragments(trace_id: bytes, spans: int = 1, root: bool = False, **kwargs: object) -> dict[bytes, Fragment]:
    return wire.split(request(trace_id, spans, root, **kwargs).SerializeToString()).fragments


def stored_size(fragment: Fragment) -> int:
    """The bytes the Redis buffer stores for a fragment (and counts): its facts record and its
    stored body, which refers to each resource by a 16-byte digest."""
    return len(wire.chain([fragment], {head: bytes(wire.DIGEST_SIZE) for head in fragment.pieces[1::2]}))
