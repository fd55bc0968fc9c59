"""A message type that reads a whole trace's span scalars as columns, in one C parse.

Most policies (status_code, latency, span_count, trace_flags, trace_state, rate limits) decide on
a few scalars of every span. Parsing with the OTLP types builds every attribute, event and link,
and every resource (repeated once per fragment), and reading a scalar then costs a Python wrapper
per span. ``TraceColumns`` uses protobuf's merge rule instead: a singular message field that
occurs many times is merged into one message, and repeated fields inside it are appended. Declaring
``resource_spans``, ``scope_spans`` and ``spans`` singular, and the span fields repeated, turns all
spans of a trace into one message whose fields are lists: every span ID, start time, end time,
status code, flags and trace state, in span order. Fields not declared are skipped as unknown.

Proto3 leaves default values off the wire, so a column holds only the spans that set it: a span
without a status code, flags or trace state, or with a zero start time, has no entry there. Every
valid span has a span ID (ingest refuses the others), so ``span_id`` counts the spans.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "tailsampler.columns"
_F = descriptor_pb2.FieldDescriptorProto

# (message, [(number, name, type, repeated, message type)]) in OTLP's numbering
_MESSAGES: list[tuple[str, list[tuple[int, str, int, bool, str]]]] = [
    ("Status", [(3, "code", _F.TYPE_INT32, True, "")]),
    ("Spans", [
        (2, "span_id", _F.TYPE_BYTES, True, ""),
        (3, "trace_state", _F.TYPE_STRING, True, ""),
        (7, "start_time_unix_nano", _F.TYPE_FIXED64, True, ""),
        (8, "end_time_unix_nano", _F.TYPE_FIXED64, True, ""),
        (15, "status", _F.TYPE_MESSAGE, False, f".{_PACKAGE}.Status"),
        (16, "flags", _F.TYPE_FIXED32, True, ""),
    ]),
    ("ScopeSpans", [(2, "spans", _F.TYPE_MESSAGE, False, f".{_PACKAGE}.Spans")]),
    ("ResourceSpans", [(2, "scope_spans", _F.TYPE_MESSAGE, False, f".{_PACKAGE}.ScopeSpans")]),
    ("TracesData", [(1, "resource_spans", _F.TYPE_MESSAGE, False, f".{_PACKAGE}.ResourceSpans")]),
]


def _build() -> type:
    file = descriptor_pb2.FileDescriptorProto(name="tailsampler/columns.proto", package=_PACKAGE, syntax="proto3")
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


TraceColumns = _build()
