"""Which service a trace is counted under: ``service.name`` of its root span's resource, or of its
first span's when the root never arrived; a bounded number of names, the rest as ``other``.

Per-trace Python work on the hot path costs more than the counting is worth (a trace of 15 spans
has a budget of a few hundred bytecodes), so the two places that count by service do it where
the answer is cheap:
- ingest counts root spans once per resource per request: the wire walk already knows which
  resource each root sits under, and hands over the resource's head (its resource and schema_url
  fields) as one shared bytes object per distinct resource, whose service is looked up once;
- the decision loop finds the root service of *kept* traces only (a small share of traffic),
  with a parse that reads nothing of a span but its IDs.
A trace's dropped count is then its root service's received count less its kept count.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from tailsampler.common.framing import field
from tailsampler.common.proto_types import FIELD, SPAN_FIELDS, FieldSpec, declare, read_past

OTHER = "other"
MAX_SERVICES = 64  # distinct service names counted on their own; later ones count as ``other``
_CACHE_MAX = 4096  # resources remembered; past this the table starts over

_B = FIELD.TYPE_BYTES
_OTLP = ".opentelemetry.proto."


def _id_column(field: FieldSpec) -> FieldSpec:
    return field._replace(repeated=True) if field.name in ("span_id", "parent_span_id") else read_past(field)


_TYPES = declare(
    "tailsampler.services",
    [
        # a resource's spans merged into columns of IDs: spans without a parent are the roots
        ("Spans", [_id_column(field) for field in SPAN_FIELDS]),
        ("ScopeSpans", [FieldSpec(1, "scope", _B), FieldSpec(2, "spans", FIELD.TYPE_MESSAGE, False, "Spans"), FieldSpec(3, "schema_url", _B)]),
        ("ResourceSpans", [
            FieldSpec(1, "resource", _B),
            FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, False, "ScopeSpans"),
            FieldSpec(3, "schema_url", _B),
        ]),
        ("TracesData", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, True, "ResourceSpans")]),
        # the resource field as the split hands it over: tag and length included
        ("ResourceField", [FieldSpec(1, "resource", FIELD.TYPE_MESSAGE, False, _OTLP + "resource.v1.Resource")]),
    ],
    ["opentelemetry/proto/resource/v1/resource.proto"],
)
_Traces = _TYPES["TracesData"]
_ResourceField = _TYPES["ResourceField"]


def root_resource(data: bytes) -> bytes:
    """The serialized resource of the trace's root span, or of its first span without a root;
    empty for a trace that cannot be read (kept all the same, as an evaluation error)."""
    try:
        entries = _Traces.FromString(data).resource_spans
    except DecodeError:
        return b""
    first = None
    for entry in entries:
        spans = entry.scope_spans.spans
        if len(spans.span_id) > len(spans.parent_span_id):
            return entry.resource
        if first is None:
            first = entry.resource
    return first or b""


def _service_of(resource_field: bytes) -> str:
    for kv in _ResourceField.FromString(resource_field).resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return ""


class ServiceNames:
    """Service names as counted: the first ``limit`` distinct names as they are, the rest as
    ``other``; resources are looked up once (the split shares one bytes object per resource, so
    its hash is computed once too)."""

    def __init__(self, limit: int = MAX_SERVICES) -> None:
        self._limit = limit
        self._named: set[str] = set()
        self._by_field: dict[bytes, str] = {}

    def label(self, service: str) -> str:
        if service in self._named:
            return service
        if len(self._named) < self._limit and service != OTHER:
            self._named.add(service)
            return service
        return OTHER

    def of_field(self, resource_field: bytes) -> str:
        """The label for a ``Resource`` field as on the wire (tag, length, message), or a
        resource's head as the wire walk shares it (the schema_url field after it is not read)."""
        found = self._by_field.get(resource_field)
        if found is None:
            if len(self._by_field) >= _CACHE_MAX:
                self._by_field.clear()
            found = self._by_field[resource_field] = self.label(_service_of(resource_field))
        return found

    def of_trace(self, data: bytes) -> str:
        """The label for a whole trace's root service."""
        return self.of_field(field(b"\x0a", root_resource(data)))
