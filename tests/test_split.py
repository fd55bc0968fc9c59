"""Splitting a request into per-trace fragments keeps every span, resource and scope intact."""

from __future__ import annotations

import os
import random

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from tailsampler.collector.split import field, split_body, split_request
from tests.otlp_layouts import mixed_request, random_body


def test_each_trace_gets_its_spans_with_their_own_resource_and_scope() -> None:
    traces = [os.urandom(16) for _ in range(3)]
    req = mixed_request(traces)
    result = split_request(req)
    assert set(result.fragments) == set(traces)
    assert result.span_count == 24 and result.rejected_spans == 0 and result.error_message == ""
    for trace_id, fragment in result.fragments.items():
        data = TracesData.FromString(fragment.data)
        assert fragment.span_count == 8 and fragment.has_root
        for r, rs in enumerate(data.resource_spans):
            assert rs.schema_url == f"https://schemas/{r}"
            assert rs.resource == req.resource_spans[r].resource
            for s, ss in enumerate(rs.scope_spans):
                original = req.resource_spans[r].scope_spans[s]
                assert ss.scope == original.scope and ss.schema_url == original.schema_url
                assert list(ss.spans) == [span for span in original.spans if span.trace_id == trace_id]


def test_fragments_of_one_trace_concatenate_into_a_valid_request() -> None:
    trace_id = os.urandom(16)
    first = split_request(mixed_request([trace_id])).fragments[trace_id]
    second = split_request(mixed_request([trace_id])).fragments[trace_id]
    joined = ExportTraceServiceRequest.FromString(first.data + second.data)
    assert sum(len(ss.spans) for rs in joined.resource_spans for ss in rs.scope_spans) == 48


def test_fragments_share_each_resource_across_traces_and_requests() -> None:
    """A buffer keeping the pieces holds a resource's bytes once, however many traces carry it."""
    traces = [os.urandom(16) for _ in range(3)]
    req = mixed_request(traces)
    runs = mixed_request(traces)
    for rs in runs.resource_spans:  # each trace's spans together, in one scope: the usual layout
        del rs.scope_spans[1:]
        ordered = sorted(rs.scope_spans[0].spans, key=lambda span: span.trace_id)
        del rs.scope_spans[0].spans[:]
        rs.scope_spans[0].spans.extend(ordered)
    fragments = [*split_request(req).fragments.values(), *split_request(runs).fragments.values()]
    fragments += split_request(mixed_request(traces)).fragments.values()
    for rs in req.resource_spans:
        resource = b"\x0a" + bytes([rs.resource.ByteSize()]) + rs.resource.SerializeToString()
        assert len({id(piece) for f in fragments for piece in f.pieces if piece == resource}) == 1
    assert all(f.size == len(f.data) for f in fragments)
    assert all(_agrees_with_the_parse(r.SerializeToString()) for r in (req, runs))


def test_invalid_ids_are_refused_and_counted_and_the_rest_kept() -> None:
    good = os.urandom(16)
    req = mixed_request([good])
    spans = req.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = bytes(16)
    spans[1].span_id = bytes(8)
    spans[2].trace_id = b"short"
    spans[3].span_id = b""
    result = split_request(req)
    assert result.rejected_spans == 4
    assert result.fragments[good].span_count == 20
    assert "4 span(s) rejected" in result.error_message


def test_a_trace_without_a_parentless_span_has_no_root() -> None:
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8))
    fragment = split_request(req).fragments[trace_id]
    assert not fragment.has_root
    assert TracesData.FromString(fragment.data).resource_spans[0].HasField("resource") is False


def test_large_spans_get_multi_byte_lengths() -> None:
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(trace_id=trace_id, span_id=os.urandom(8))
    span.attributes.add(key="payload").value.string_value = "x" * 100_000
    data = TracesData.FromString(split_request(req).fragments[trace_id].data)
    assert data.resource_spans[0].scope_spans[0].spans[0] == span


def _spans_by_trace(data: bytes) -> dict[bytes, list[tuple[object, ...]]]:
    """Each trace's spans with the resource and scope they were sent under, read from upb's parse."""
    out: dict[bytes, list[tuple[object, ...]]] = {}
    for rs in TracesData.FromString(data).resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.setdefault(span.trace_id, []).append((rs.resource, rs.schema_url, ss.scope, ss.schema_url, span))
    return out


def _agrees_with_the_parse(body: bytes) -> bool:
    """The split keeps exactly the spans with valid IDs, each under its own resource and scope,
    and finds the roots and counts that a span-by-span reading of upb's parse finds."""
    result = split_body(body)
    expected = {
        trace_id: [entry for entry in spans if len(entry[4].span_id) == 8 and entry[4].span_id != bytes(8)]
        for trace_id, spans in _spans_by_trace(body).items()
        if len(trace_id) == 16 and trace_id != bytes(16)
    }
    expected = {trace_id: spans for trace_id, spans in expected.items() if spans}
    assert set(result.fragments) == set(expected)
    for trace_id, fragment in result.fragments.items():
        assert _spans_by_trace(fragment.data) == {trace_id: expected[trace_id]}
        assert fragment.span_count == len(expected[trace_id])
        assert fragment.has_root is any(not entry[4].parent_span_id for entry in expected[trace_id])
    assert result.span_count == sum(map(len, expected.values()))
    assert result.rejected_spans == sum(map(len, _spans_by_trace(body).values())) - result.span_count
    return True


@pytest.mark.parametrize("adjacent", [False, True], ids=["interleaved", "runs"])
def test_fragments_hold_what_upbs_parse_reads(adjacent: bool) -> None:
    traces = [os.urandom(16) for _ in range(3)]
    req = mixed_request(traces)
    if adjacent:  # each trace's spans next to each other, as an SDK usually exports them
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                ordered = sorted(ss.spans, key=lambda span: span.trace_id)
                del ss.spans[:]
                ss.spans.extend(ordered)
    spans = req.resource_spans[1].scope_spans[0].spans
    spans[0].trace_state = "ot=th:8"  # trace_state sits between span_id and parent_span_id
    spans[1].trace_id = bytes(16)
    assert _agrees_with_the_parse(req.SerializeToString())
    assert split_request(req).rejected_spans == 1


def test_spans_whose_fields_are_out_of_order_are_read_span_by_span() -> None:
    """Protobuf allows any field order; a span not led by trace_id/span_id has no place in the columns' runs."""
    trace_id, span_id, parent = os.urandom(16), os.urandom(8), os.urandom(8)
    span = b"\x2a\x01x" + b"\x22\x08" + parent + b"\x12\x08" + span_id + b"\x0a\x10" + trace_id  # name first
    scope = b"\x12" + bytes([len(span)]) + span
    resource = b"\x12" + bytes([len(scope)]) + scope
    body = b"\x0a" + bytes([len(resource)]) + resource
    fragment = split_body(body).fragments[trace_id]
    assert fragment.span_count == 1 and not fragment.has_root
    assert TracesData.FromString(fragment.data).resource_spans[0].scope_spans[0].spans[0].span_id == span_id
    assert _agrees_with_the_parse(body)


def test_a_root_whose_fields_are_out_of_order_is_found() -> None:
    """Its bytes where encoders put parent_span_id happen to read as one; the count of spans
    without a parent says a root is missing, and every span's own parse finds it."""
    trace_id = os.urandom(16)
    name = field(b"\x2a", b"x" * 26 + b'"\x08yy')  # b'"\x08' lands on bytes 28-29
    root = name + b"\x0a\x10" + trace_id + b"\x12\x08" + os.urandom(8)
    child = Span(trace_id=os.urandom(16), span_id=os.urandom(8), parent_span_id=os.urandom(8)).SerializeToString()
    assert root[28:30] == b"\x22\x08"
    body = field(b"\x0a", field(b"\x12", field(b"\x12", child) + field(b"\x12", root)))
    assert split_body(body).fragments[trace_id].has_root
    assert _agrees_with_the_parse(body)


def test_bytes_the_walk_cannot_follow_are_encoded_again_from_the_parse() -> None:
    """An unknown group field (wire type 3) in a ScopeSpans: upb keeps it, the field walk stops there."""
    trace_id, span_id = os.urandom(16), os.urandom(8)
    span = b"\x0a\x10" + trace_id + b"\x12\x08" + span_id + b"\x2a\x01x"
    scope = b"\x12" + bytes([len(span)]) + span + b"\x7b\x08\x01\x7c"  # group 15 { varint 1 }
    resource = b"\x12" + bytes([len(scope)]) + scope
    body = b"\x0a" + bytes([len(resource)]) + resource
    result = split_body(body)
    assert result.fragments[trace_id].span_count == 1 and result.fragments[trace_id].has_root
    assert _agrees_with_the_parse(body)


def test_other_fields_between_spans_send_the_scope_span_by_span() -> None:
    """Encoders write a scope's fields in order, but protobuf allows its schema_url between spans."""
    traces = [os.urandom(16) for _ in range(2)]
    spans = [
        field(b"\x12", Span(trace_id=traces[i % 2], span_id=os.urandom(8), parent_span_id=os.urandom(8)).SerializeToString())
        for i in range(4)
    ]
    scope = spans[0] + spans[1] + b"\x1a\x03url" + spans[2] + spans[3]
    body = field(b"\x0a", field(b"\x12", scope))
    assert _agrees_with_the_parse(body)
    assert TracesData.FromString(split_body(body).fragments[traces[0]].data).resource_spans[0].scope_spans[0].schema_url == "url"


def test_a_body_that_is_not_a_request_is_refused_before_anything_is_split() -> None:
    good = mixed_request([os.urandom(16)]).SerializeToString()
    invalid_utf8 = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="ok").SerializeToString().replace(b"ok", b"\xff\xfe")
    for body in (good[:-3], b"\x0a\x05abc", field(b"\x0a", field(b"\x12", field(b"\x12", invalid_utf8)))):
        with pytest.raises(DecodeError) as refused:
            split_body(body)
        assert "tailsampler" not in str(refused.value)


def test_a_zero_span_id_sends_its_scope_span_by_span_and_the_rest_stays_in_runs() -> None:
    traces = [os.urandom(16) for _ in range(2)]
    req = mixed_request(traces)
    req.resource_spans[0].scope_spans[1].spans[4].span_id = bytes(8)
    assert _agrees_with_the_parse(req.SerializeToString())
    assert split_request(req).rejected_spans == 1


@pytest.mark.parametrize(
    "layout", ["tiny", "huge", "trace_state", "out_of_order", "short_trace_id", "root_in_run"]
)
def test_spans_off_the_fast_path_keep_their_runs_counts_and_roots(layout: str) -> None:
    """Runs of one trace with spans the columns cannot vouch for, or whose roots are not where encoders put parent_span_id."""
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(5):
        ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8), name=f"s{i}")
    middle = ss.spans[2]
    if layout == "tiny":  # under 30 bytes: no name, no parent
        middle.ClearField("name")
        middle.ClearField("parent_span_id")
    elif layout == "huge":  # a three-byte length
        middle.attributes.add(key="payload").value.string_value = "x" * 20_000
    elif layout == "trace_state":  # parent_span_id is not the third field
        middle.trace_state = "ot=th:8"
        ss.spans[3].trace_state = "ot=th:8"
        ss.spans[3].ClearField("parent_span_id")
    elif layout == "short_trace_id":
        middle.trace_id = b"short"
    elif layout == "root_in_run":
        middle.ClearField("parent_span_id")
    body = bytearray(req.SerializeToString())
    if layout == "out_of_order":  # the middle span's name before its IDs
        span = middle.SerializeToString()
        name = b"\x2a\x02s2"
        reordered = name + span.replace(name, b"")
        body = bytearray(body.replace(span, reordered))
    result = split_body(bytes(body))
    assert _agrees_with_the_parse(bytes(body))
    expected_roots = layout in ("tiny", "trace_state", "root_in_run")
    assert result.fragments[trace_id].has_root is expected_roots
    assert result.fragments[trace_id].span_count == (4 if layout == "short_trace_id" else 5)


def test_spans_of_one_byte_lengths_run_together() -> None:
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add(schema_url="https://scope")
    for _ in range(3):
        ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8), name="n")
    assert len(ss.spans[0].SerializeToString()) < 0x80
    assert _agrees_with_the_parse(req.SerializeToString())


@pytest.mark.parametrize("seed", range(300))
def test_any_layout_splits_into_what_upbs_parse_reads(seed: int) -> None:
    assert _agrees_with_the_parse(random_body(random.Random(seed)))
