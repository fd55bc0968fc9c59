"""The read-only view of one buffered trace that every policy evaluates.

A trace arrives as the concatenated fragments written by the receivers, which is a valid
``TracesData`` body; the view parses what the configured policies need of it, once, and offers
the facts policies ask for most (duration, root span, span count) without each policy walking the
spans again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from .columns import TraceColumns


@dataclass(frozen=True, slots=True)
class SpanRef:
    """One span with the resource and scope it was sent under."""

    span: Span
    resource: Resource
    scope: InstrumentationScope


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` into the matching Python value (None when unset)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attribute(attributes: "list[KeyValue] | Any", key: str) -> Any:
    """The value of ``key`` in a repeated ``KeyValue`` field, or None when absent."""
    for kv in attributes:
        if kv.key == key:
            return any_value(kv.value)
    return None


class TraceView:
    """All spans received for one trace, with derived facts computed on demand.

    Most traces are decided on a few span scalars (status, times, flags), so those come from one
    parse into columns (``policies/columns.py``) that builds no per-span objects; the full OTLP
    parse, and per-span wrappers with resource and scope (``spans``), are built only for the
    policies that ask for them.
    """

    __slots__ = (
        "trace_id", "data", "span_count", "status_codes", "start_time_unix_nano", "end_time_unix_nano",
        "_columns", "__dict__",
    )

    def __init__(self, trace_id: bytes, data: bytes) -> None:
        self.trace_id = trace_id
        self.data = data
        columns = self._columns = TraceColumns.FromString(data).resource_spans.scope_spans.spans
        self.span_count: int = len(columns.span_id)
        codes = columns.status.code[:]  # a span without a code is UNSET (0)
        self.status_codes: frozenset[int] = frozenset(codes + [0] if len(codes) < self.span_count else codes)
        starts = columns.start_time_unix_nano[:]  # a span without a start time starts the trace at 0
        self.start_time_unix_nano: int = min(starts) if starts and len(starts) == self.span_count else 0
        self.end_time_unix_nano: int = max(columns.end_time_unix_nano[:], default=0)

    @cached_property
    def parsed(self) -> TracesData:
        return TracesData.FromString(self.data)

    @cached_property
    def spans(self) -> list[SpanRef]:
        return [
            SpanRef(span, rs.resource, ss.scope)
            for rs in self.parsed.resource_spans[:]
            for ss in rs.scope_spans[:]
            for span in ss.spans[:]
        ]

    @property
    def span_flags(self) -> list[int]:
        """The ``flags`` of every span that sets any."""
        return self._columns.flags[:]

    @property
    def trace_states(self) -> list[str]:
        """The W3C ``tracestate`` of every span that carries one."""
        return self._columns.trace_state[:]

    @property
    def byte_size(self) -> int:
        return len(self.data)

    @property
    def duration_ns(self) -> int:
        """Earliest span start to latest span end over the whole trace."""
        return max(0, self.end_time_unix_nano - self.start_time_unix_nano)

    @cached_property
    def root(self) -> SpanRef | None:
        """The span without a parent, if it has arrived."""
        return next((ref for ref in self.spans if not ref.span.parent_span_id), None)
