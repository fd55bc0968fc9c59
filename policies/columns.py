"""A message type that reads a whole trace's trace states and flags as columns, in one C parse.

``TraceColumns`` uses protobuf's merge rule: a singular message field that occurs many times is
merged into one message, and repeated fields inside it are appended. Declaring
``resource_spans``, ``scope_spans`` and ``spans`` singular, and ``trace_state`` and ``flags``
repeated, turns all spans of a trace into one message whose fields list every span's, in span
order (proto3 leaves a default value off the wire, so only the spans that set one). Every other OTLP
field is declared too, as a singular field of its wire type that each occurrence overwrites:
upb keeps undeclared fields as unknown, copying each one aside, and that cost a fifth of the parse.
"""

from __future__ import annotations

from tailsampler.common.proto_types import FIELD, SPAN_FIELDS, FieldSpec, declare, read_past

_B = FIELD.TYPE_BYTES


_COLUMNS = {"trace_state", "flags"}


def _span_column(field: FieldSpec) -> FieldSpec:
    return field._replace(repeated=True) if field.name in _COLUMNS else read_past(field)


TraceColumns = declare("tailsampler.columns", [
    ("Spans", [_span_column(field) for field in SPAN_FIELDS]),
    ("ScopeSpans", [FieldSpec(1, "scope", _B), FieldSpec(2, "spans", FIELD.TYPE_MESSAGE, False, "Spans"), FieldSpec(3, "schema_url", _B)]),
    ("ResourceSpans", [
        FieldSpec(1, "resource", _B),
        FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, False, "ScopeSpans"),
        FieldSpec(3, "schema_url", _B),
    ]),
    ("TracesData", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, False, "ResourceSpans")]),
])["TracesData"]
