"""The facts the trace store indexes a kept trace by, read from its ``TracesData`` body."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Status, TracesData

_ERROR = Status.STATUS_CODE_ERROR


def service_name(resource: Resource) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return ""


@dataclass(frozen=True, slots=True)
class TraceSummary:
    start_unix_nano: int
    end_unix_nano: int
    span_count: int
    error: bool
    root_service: str | None
    root_name: str | None


def summarize(data: bytes) -> TraceSummary:
    parsed = TracesData.FromString(data)
    start = end = count = 0
    error = False
    root_service = root_name = None
    for rs in parsed.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                count += 1
                if not start or span.start_time_unix_nano < start:
                    start = span.start_time_unix_nano
                end = max(end, span.end_time_unix_nano)
                error = error or span.status.code == _ERROR
                if root_name is None and not span.parent_span_id:
                    root_name = span.name
                    root_service = service_name(rs.resource)
    return TraceSummary(start, end, count, error, root_service, root_name)
