"""How the spans of an export request sit under their scope.

The generator batches a trace's spans side by side (``contiguous``). An SDK whose batch processor
collects spans of concurrent requests sends them mixed (``interleaved``): each scope's spans dealt
out one trace at a time. Both carry the same spans, byte for byte; only their order differs, and
splitting a request per trace costs more on the second, so the benchmark sends that by default.
"""

from __future__ import annotations

from tailsampler.common.proto_types import FIELD, FieldSpec, declare

LAYOUTS = ("interleaved", "contiguous")

# A request with each span as bytes: spans are dealt out again without touching their bytes.
_SPANS_AS_BYTES = declare("tailsampler.loadgen.layout", [
    ("ScopeSpans", [FieldSpec(1, "scope", FIELD.TYPE_BYTES), FieldSpec(2, "spans", FIELD.TYPE_BYTES, True),
                    FieldSpec(3, "schema_url", FIELD.TYPE_BYTES)]),
    ("ResourceSpans", [FieldSpec(1, "resource", FIELD.TYPE_BYTES), FieldSpec(2, "scope_spans", FIELD.TYPE_MESSAGE, True, "ScopeSpans"),
                       FieldSpec(3, "schema_url", FIELD.TYPE_BYTES)]),
    ("Request", [FieldSpec(1, "resource_spans", FIELD.TYPE_MESSAGE, True, "ResourceSpans")]),
])["Request"]


def interleaved(body: bytes) -> bytes:
    """The request with each scope's spans dealt out one trace at a time (the generator writes
    each span's trace ID first), every span's bytes unchanged."""
    request = _SPANS_AS_BYTES.FromString(body)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            by_trace: dict[bytes, list[bytes]] = {}
            for span in ss.spans:
                by_trace.setdefault(span[2:18], []).append(span)
            queues = list(by_trace.values())
            dealt = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
            del ss.spans[:]
            ss.spans.extend(dealt)
    return request.SerializeToString()

