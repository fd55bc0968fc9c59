"""Message types declared at run time, and the one table of OTLP's span fields they are made from.

The hot paths parse spans with purpose-built message types rather than OTLP's own: the split
reads a scope's spans as columns, the decision reads a trace's span scalars as columns. Both are
protobuf declarations built here from OTLP's own ``Span`` descriptor, so field numbers and types
are written nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.trace.v1.trace_pb2 import Span

FIELD = descriptor_pb2.FieldDescriptorProto


class FieldSpec(NamedTuple):
    """One field of a declared message; a ``type_name`` starting with a dot is absolute, any other
    names a message of the same declaration."""

    number: int
    name: str
    type: int
    repeated: bool = False
    type_name: str = ""
    present: bool = False  # proto3 ``optional``: a singular field that tracks its presence


Messages = Sequence[tuple[str, Sequence[FieldSpec]]]


def _absolute_type(field: object) -> str:
    described = getattr(field, "message_type", None) or getattr(field, "enum_type", None)
    return f".{described.full_name}" if described is not None else ""


SPAN_FIELDS: tuple[FieldSpec, ...] = tuple(
    FieldSpec(f.number, f.name, f.type, False, _absolute_type(f)) for f in Span.DESCRIPTOR.fields
)
"""OTLP's ``Span`` fields as its own descriptor declares them, in field-number order."""

# the type that reads a field past without parsing it, by the wire form of its declared type
_READ_PAST = {
    FIELD.TYPE_FIXED64: FIELD.TYPE_FIXED64,
    FIELD.TYPE_FIXED32: FIELD.TYPE_FIXED32,
    FIELD.TYPE_STRING: FIELD.TYPE_BYTES,
    FIELD.TYPE_BYTES: FIELD.TYPE_BYTES,
    FIELD.TYPE_MESSAGE: FIELD.TYPE_BYTES,
}


def read_past(field: FieldSpec) -> FieldSpec:
    """``field`` declared so that a parse skips its content: singular, as bytes or a plain integer
    of the same wire type (each occurrence overwrites the last; nothing is built or checked)."""
    return FieldSpec(field.number, field.name, _READ_PAST.get(field.type, FIELD.TYPE_UINT64))


def declare(package: str, messages: Messages, dependencies: Sequence[str] = ()) -> dict[str, type]:
    """Message classes for ``messages``, added to the default pool as ``package`` (whose
    ``dependencies``, .proto files already imported, provide the absolute type names)."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto3")
    file.dependency.extend(dependencies)
    for name, fields in messages:
        message = file.message_type.add(name=name)
        for spec in fields:
            label = FIELD.LABEL_REPEATED if spec.repeated else FIELD.LABEL_OPTIONAL
            field = message.field.add(name=spec.name, number=spec.number, type=spec.type, label=label)
            if spec.present:  # a synthetic oneof of its own, as protoc declares ``optional``
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{spec.name}")
            if spec.type_name:
                field.type_name = spec.type_name if spec.type_name.startswith(".") else f".{package}.{spec.type_name}"
    pool = descriptor_pool.Default()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name, _ in messages}
