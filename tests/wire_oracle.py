"""What upb's parse of OTLP's own types says a request holds, to check the wire cores against."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

from tailsampler.common import trace_facts
from tailsampler.policies.probabilistic import DEFAULT_HASH_SALT, fnv1a_64

Entry = tuple[object, ...]  # resource, its schema_url, scope, its schema_url, span


def spans_by_trace(data: bytes) -> dict[bytes, list[Entry]]:
    """Each trace's spans with the resource and scope they were sent under, in request order."""
    out: dict[bytes, list[Entry]] = {}
    for rs in TracesData.FromString(data).resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.setdefault(span.trace_id, []).append((rs.resource, rs.schema_url, ss.scope, ss.schema_url, span))
    return out


def valid(trace_id: bytes, span_id: bytes) -> bool:
    return len(trace_id) == 16 and trace_id != bytes(16) and len(span_id) == 8 and span_id != bytes(8)


def accepted(body: bytes) -> dict[bytes, list[Entry]]:
    """The spans a wire core must keep, those with valid IDs, by trace."""
    kept: dict[bytes, list[Entry]] = {}  # in the order of each trace's first valid span
    for rs in TracesData.FromString(body).resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if valid(span.trace_id, span.span_id):
                    kept.setdefault(span.trace_id, []).append((rs.resource, rs.schema_url, ss.scope, ss.schema_url, span))
    return kept


def facts_of(trace_id: bytes, spans: list[Entry], size: int) -> bytes:
    """The facts record of these spans, read from upb's parse."""
    bits = 0
    for entry in spans:
        span = entry[4]
        code = span.status.code
        bits |= trace_facts.STATUS_BITS.get(code, trace_facts.STATUS_OTHER)
        bits |= trace_facts.ROOT if not span.parent_span_id else 0
        bits |= trace_facts.TRACE_STATE if span.trace_state else 0
        bits |= trace_facts.SAMPLED if span.flags & 1 else 0
    start = min(e[4].start_time_unix_nano for e in spans)
    end = max(e[4].end_time_unix_nano for e in spans)
    return trace_facts.pack(bits, len(spans), size, start, end, fnv1a_64(trace_id, fnv1a_64(DEFAULT_HASH_SALT.encode())))


def check_split(split: object, body: bytes) -> None:
    """The split of ``body`` keeps exactly the valid spans, each under its own resource and scope,
    with the facts upb's parse gives."""
    fragments, span_count, rejected = split.fragments, split.span_count, split.rejected_spans  # type: ignore[attr-defined]
    expected = accepted(body)
    assert list(fragments) == list(expected)  # in the order of each trace's first span
    for trace_id, fragment in fragments.items():
        data = fragment.data
        assert spans_by_trace(data) == {trace_id: expected[trace_id]}
        assert fragment.size == len(data)
        assert fragment.facts == facts_of(trace_id, expected[trace_id], len(data))
        assert fragment.span_count == len(expected[trace_id])
    assert span_count == sum(map(len, expected.values()))
    assert rejected == sum(map(len, spans_by_trace(body).values())) - span_count
    expected_roots: dict[tuple[bytes, str], int] = {}
    for rs in TracesData.FromString(body).resource_spans:
        found = sum(1 for ss in rs.scope_spans for span in ss.spans if valid(span.trace_id, span.span_id) and not span.parent_span_id)
        if found:
            key = (rs.resource.SerializeToString(), rs.schema_url)
            expected_roots[key] = expected_roots.get(key, 0) + found
    roots: dict[tuple[bytes, str], int] = {}
    for head, found in split.root_resources.items():  # type: ignore[attr-defined]
        parsed = ResourceSpans.FromString(head)
        key = (parsed.resource.SerializeToString(), parsed.schema_url)
        roots[key] = roots.get(key, 0) + found
    assert roots == expected_roots
