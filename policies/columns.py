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

from tailsampler.common.proto_types import FIELD, SPAN_FIELDS, FieldSpec, declare, read_past

_B = FIELD.TYPE_BYTES
# the span fields policies read, as columns; every other field is read past
_COLUMNS = {"span_id", "trace_state", "start_time_unix_nano", "end_time_unix_nano", "flags"}


def _span_column(field: FieldSpec) -> FieldSpec:
    if field.name == "status":
        return FieldSpec(field.number, field.name, FIELD.TYPE_MESSAGE, False, "Status")
    if field.name in _COLUMNS:
        return field._replace(repeated=True)
    return read_past(field)


TraceColumns = declare("tailsampler.columns", [
    ("Status", [FieldSpec(2, "message", _B), FieldSpec(3, "code", FIELD.TYPE_INT32, True)]),
    ("Spans", [_span_column(field) for field in SPAN_FIELDS]),
    ("ScopeSpans", [FieldSpec(1, "scope", _B), FieldSpec(2, "spans", FIELD.TYPE_MESSAGE, False, "Spans"), FieldSpec(3, "schema_url", _B)]),
    ("ResourceSpans", [
        FieldSpec(1, "resource", _B),
        FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, False, "ScopeSpans"),
        FieldSpec(3, "schema_url", _B),
    ]),
    ("TracesData", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, False, "ResourceSpans")]),
])["TracesData"]


_ERROR_CODE = b"\x18\x02"  # Status.code (field 3, varint) = STATUS_CODE_ERROR, as encoders write it


def has_error(data: bytes) -> bool:
    """Whether any span of a ``TracesData`` body has status ERROR. The bytes an error status is
    written as are looked for first, so most bodies without an error are never parsed."""
    if _ERROR_CODE not in data:
        return False
    return 2 in TraceColumns.FromString(data).resource_spans.scope_spans.spans.status.code
