"""A message type that reads a whole trace's span scalars as columns, in one C parse.

Most policies (status_code, latency, span_count, trace_flags, trace_state, rate limits) decide on
a few scalars of every span. Parsing with the OTLP types builds every attribute, event and link,
and every resource (repeated once per fragment), and reading a scalar then costs a Python wrapper
per span. ``TraceColumns`` uses protobuf's merge rule instead: a singular message field that
occurs many times is merged into one message, and repeated fields inside it are appended. Declaring
``resource_spans``, ``scope_spans`` and ``spans`` singular, and the span fields repeated, turns all
spans of a trace into one message whose fields are lists: every span ID, start time, end time,
status code, flags and trace state, in span order. Every other OTLP field is declared too, as a
singular field of its wire type that each occurrence overwrites: upb keeps undeclared fields as
unknown, copying each one aside, and that cost a fifth of the parse.

Proto3 leaves default values off the wire, so a column holds only the spans that set it: a span
without a status code, flags or trace state, or with a zero start time, has no entry there. Every
valid span has a span ID (ingest refuses the others), so ``span_id`` counts the spans.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FIELD = descriptor_pb2.FieldDescriptorProto
# (message, [(number, name, type, repeated, message or enum type)]); a type name starting with a
# dot is absolute, any other is a message of the same declaration
Messages = Sequence[tuple[str, Sequence[tuple[int, str, int, bool, str]]]]


def declare(package: str, messages: Messages, dependencies: Sequence[str] = ()) -> dict[str, type]:
    """Message classes for ``messages``, added to the default pool as ``package`` (whose
    ``dependencies``, .proto files already imported, provide the absolute type names)."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto3")
    file.dependency.extend(dependencies)
    for name, fields in messages:
        message = file.message_type.add(name=name)
        for number, field_name, kind, repeated, type_name in fields:
            label = FIELD.LABEL_REPEATED if repeated else FIELD.LABEL_OPTIONAL
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name if type_name.startswith(".") else f".{package}.{type_name}"
    pool = descriptor_pool.Default()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name, _ in messages}


_B, _V = FIELD.TYPE_BYTES, FIELD.TYPE_UINT64  # the types of the fields read past: any length-delimited / varint


TraceColumns = declare("tailsampler.columns", [
    ("Status", [(2, "message", _B, False, ""), (3, "code", FIELD.TYPE_INT32, True, "")]),
    ("Spans", [
        (1, "trace_id", _B, False, ""),
        (2, "span_id", FIELD.TYPE_BYTES, True, ""),
        (3, "trace_state", FIELD.TYPE_STRING, True, ""),
        (4, "parent_span_id", _B, False, ""),
        (5, "name", _B, False, ""),
        (6, "kind", _V, False, ""),
        (7, "start_time_unix_nano", FIELD.TYPE_FIXED64, True, ""),
        (8, "end_time_unix_nano", FIELD.TYPE_FIXED64, True, ""),
        (9, "attributes", _B, False, ""),
        (10, "dropped_attributes_count", _V, False, ""),
        (11, "events", _B, False, ""),
        (12, "dropped_events_count", _V, False, ""),
        (13, "links", _B, False, ""),
        (14, "dropped_links_count", _V, False, ""),
        (15, "status", FIELD.TYPE_MESSAGE, False, "Status"),
        (16, "flags", FIELD.TYPE_FIXED32, True, ""),
    ]),
    ("ScopeSpans", [(1, "scope", _B, False, ""), (2, "spans", FIELD.TYPE_MESSAGE, False, "Spans"), (3, "schema_url", _B, False, "")]),
    ("ResourceSpans", [
        (1, "resource", _B, False, ""),
        (2, "scope_spans", FIELD.TYPE_MESSAGE, False, "ScopeSpans"),
        (3, "schema_url", _B, False, ""),
    ]),
    ("TracesData", [(1, "resource_spans", FIELD.TYPE_MESSAGE, False, "ResourceSpans")]),
])["TracesData"]
