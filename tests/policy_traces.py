"""Build real OTLP traces for policy tests: protobuf requests split by the collector's own
splitter, then read back as the ``TraceView`` the decision loop would hand the engine."""

from __future__ import annotations

import itertools
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tailsampler.collector import wire
from tailsampler.collector.config import TailSamplingConfig
from tailsampler.common import trace_facts
from tailsampler.common.settings import decode
from tailsampler.policies import Engine, PolicyContext, TraceView, build_engine

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
MS = 1_000_000
_span_ids = itertools.count(1)


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=v)


def attrs(mapping: dict[str, Any] | None) -> list[KeyValue]:
    return [KeyValue(key=k, value=value(v)) for k, v in (mapping or {}).items()]


def span(
    name: str = "op",
    *,
    start_ms: int = 0,
    end_ms: int = 10,
    status: int = 0,
    attributes: dict[str, Any] | None = None,
    root: bool = False,
    kind: int = 1,
    trace_state: str = "",
    flags: int = 0,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    trace_id: bytes = TRACE_ID,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=next(_span_ids).to_bytes(8, "big"),
        parent_span_id=b"" if root else b"\x00\x00\x00\x00\x00\x00\xff\xff",
        name=name,
        kind=kind,
        start_time_unix_nano=1_700_000_000_000 * MS + start_ms * MS,
        end_time_unix_nano=1_700_000_000_000 * MS + end_ms * MS,
        status=Status(code=status),
        attributes=attrs(attributes),
        trace_state=trace_state,
        flags=flags,
        events=[Span.Event(name=n, attributes=attrs(a)) for n, a in (events or [])],
    )


def with_map_attribute(s: Span, key: str, mapping: dict[str, str]) -> Span:
    """``s`` with a map-valued attribute, which string-like readers cannot use."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValueList

    s.attributes.append(KeyValue(key=key, value=AnyValue(kvlist_value=KeyValueList(values=attrs(mapping)))))
    return s


def resource_spans(spans: list[Span], resource: dict[str, Any] | None = None, scope: str = "test.scope") -> ResourceSpans:
    return ResourceSpans(
        resource=Resource(attributes=attrs(resource)),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)],
    )


def view(*groups: ResourceSpans | Span, trace_id: bytes = TRACE_ID) -> TraceView:
    """The trace ``trace_id`` out of a request holding ``groups`` (bare spans get an empty resource)."""
    request = ExportTraceServiceRequest(
        resource_spans=[g if isinstance(g, ResourceSpans) else resource_spans([g]) for g in groups]
    )
    fragment = wire.split(request.SerializeToString()).fragments.get(trace_id)
    if fragment is None:
        return TraceView(trace_id, b"", trace_facts.pack(0, 0, 0, 0, 0, wire.fnv1a_64(trace_id, wire.DEFAULT_SALT_STATE)))
    return TraceView(trace_id, fragment.data, fragment.facts)


def ts_config(policies: list[dict], **top: Any) -> TailSamplingConfig:
    return decode({"policies": policies, **top}, TailSamplingConfig, "tail_sampling")


class FakeClock:
    """Simulated seconds: tests move time forward explicitly."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine(policies: list[dict], clock: FakeClock | None = None, **top: Any) -> Engine:
    return build_engine(ts_config(policies, **top), PolicyContext(clock or FakeClock()))


def only(policy: dict) -> Engine:
    return engine([policy])
