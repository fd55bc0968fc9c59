"""Message types that read only the span fields most policies decide on.

Parsing a whole trace with the OTLP types builds every attribute, event and link of every span
and of every resource (which a buffered trace repeats once per fragment), yet the common policies
(status_code, latency, span_count, probabilistic, trace_flags, trace_state, rate limits) look at a
handful of scalars. These types declare just those fields; upb keeps the rest as unknown bytes
without building anything, which makes the parse about three times cheaper. The field numbers and
types are OTLP's, so any valid ``TracesData`` body parses.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "tailsampler.summary"
_F = descriptor_pb2.FieldDescriptorProto

# (message, [(number, name, type, repeated, message type)]) in OTLP's numbering
_MESSAGES: list[tuple[str, list[tuple[int, str, int, bool, str]]]] = [
    ("Span", [
        (3, "trace_state", _F.TYPE_STRING, False, ""),
        (4, "parent_span_id", _F.TYPE_BYTES, False, ""),
        (7, "start_time_unix_nano", _F.TYPE_FIXED64, False, ""),
        (8, "end_time_unix_nano", _F.TYPE_FIXED64, False, ""),
        (15, "status", _F.TYPE_MESSAGE, False, ".opentelemetry.proto.trace.v1.Status"),
        (16, "flags", _F.TYPE_FIXED32, False, ""),
    ]),
    ("ScopeSpans", [(2, "spans", _F.TYPE_MESSAGE, True, f".{_PACKAGE}.Span")]),
    ("ResourceSpans", [(2, "scope_spans", _F.TYPE_MESSAGE, True, f".{_PACKAGE}.ScopeSpans")]),
    ("TracesData", [(1, "resource_spans", _F.TYPE_MESSAGE, True, f".{_PACKAGE}.ResourceSpans")]),
]


def _build() -> type:
    import opentelemetry.proto.trace.v1.trace_pb2  # noqa: F401  (registers Status in the default pool)

    file = descriptor_pb2.FileDescriptorProto(
        name="tailsampler/summary.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["opentelemetry/proto/trace/v1/trace.proto"],
    )
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for number, field_name, kind, repeated, type_name in fields:
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.Default()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.TracesData"))


SummaryTraces = _build()
