"""The read-only view of one buffered trace that every policy evaluates.

A trace arrives as the concatenated fragments written by the receivers, which is a valid
``TracesData`` body, with the facts record the wire walk gathered of them; the view offers the
facts policies ask for most (duration, status codes, span count) without a parse, and parses what
the other policies need of the bytes, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from tailsampler.common.trace_facts import FACTS_VERSION, RECORD, ROOT, SAMPLED, STATUS_CODES, TRACE_STATE

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

    Most traces are decided on facts the wire walk gathered as the spans came in (span count,
    bytes, earliest start and latest end, status codes, root seen, trace state present, sampled
    flag, the ``probabilistic`` hash), carried with the spans as one merged record
    (``common/trace_facts.py``), so those policies parse nothing. The full OTLP parse, and per-span
    wrappers with resource and scope (``spans``), are built only for the policies that read
    attributes, names or events; trace states are read (one columns parse,
    ``policies/columns.py``) only for a trace whose facts say a span carries one.
    """

    __slots__ = (
        "trace_id", "data", "span_count", "byte_size", "start_time_unix_nano", "end_time_unix_nano", "probabilistic_hash",
        "_bits", "__dict__",
    )

    def __init__(self, trace_id: bytes, data: bytes, facts: bytes) -> None:
        self.trace_id = trace_id
        self.data = data
        version, self._bits, _, self.span_count, self.byte_size, self.start_time_unix_nano, self.end_time_unix_nano, \
            self.probabilistic_hash = RECORD.unpack(facts)
        if version != FACTS_VERSION:
            raise ValueError(f"facts record of version {version}, expected {FACTS_VERSION}")

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
    def status_codes(self) -> frozenset[int]:
        """The OTLP status codes its spans have (0 UNSET, 1 OK, 2 ERROR)."""
        return STATUS_CODES[self._bits]

    @property
    def has_root(self) -> bool:
        return bool(self._bits & ROOT)

    @property
    def sampled(self) -> bool:
        """Whether any span carries the W3C sampled flag (bit 0 of ``flags``)."""
        return bool(self._bits & SAMPLED)

    @property
    def has_trace_state(self) -> bool:
        return bool(self._bits & TRACE_STATE)

    @property
    def trace_states(self) -> list[str]:
        """The W3C ``tracestate`` of every span that carries one."""
        if not self._bits & TRACE_STATE:
            return []
        return self._columns.trace_state[:]

    @property
    def span_flags(self) -> list[int]:
        """The ``flags`` of every span that sets any."""
        return self._columns.flags[:]

    @cached_property
    def _columns(self) -> Any:
        return TraceColumns.FromString(self.data).resource_spans.scope_spans.spans

    @property
    def duration_ns(self) -> int:
        """Earliest span start to latest span end over the whole trace."""
        return max(0, self.end_time_unix_nano - self.start_time_unix_nano)

    @cached_property
    def root(self) -> SpanRef | None:
        """The span without a parent, if it has arrived."""
        if not self._bits & ROOT:
            return None
        return next((ref for ref in self.spans if not ref.span.parent_span_id), None)
