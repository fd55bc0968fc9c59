"""The wire core that runs (``TAILSAMPLER_NO_EXTENSIONS=1`` picks the pure one) against upb's parse
of OTLP's own types: fragments, facts, refused spans and refused bodies."""

from __future__ import annotations

import os
import random

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, TracesData

from tailsampler.collector import wire
from tailsampler.common import trace_facts
from tailsampler.policies import TraceView
from tailsampler.policies.probabilistic import DEFAULT_HASH_SALT, fnv1a_64
from tests import wire_bodies
from tests.otlp_layouts import mixed_request, random_body
from tests.wire_oracle import check_split


def test_the_core_that_runs_is_the_one_asked_for() -> None:
    assert wire.CORE == ("python" if wire.NO_EXTENSIONS else "c")


@pytest.mark.parametrize("seed", range(200))
def test_any_layout_splits_into_what_upbs_parse_reads(seed: int) -> None:
    check_split(wire.split(random_body(random.Random(seed))), random_body(random.Random(seed)))


@pytest.mark.parametrize("seed", range(5))
def test_real_requests_split_into_what_upbs_parse_reads(seed: int) -> None:
    body = wire_bodies.real_request(300, seed)
    check_split(wire.split(body), body)


@pytest.mark.parametrize(
    "make",
    [wire_bodies.trace_id_twice, wire_bodies.span_id_twice_beside_none, wire_bodies.parent_twice_beside_root,
     wire_bodies.last_occurrences, wire_bodies.known_fields_of_other_wire_types],
)
def test_the_last_occurrence_of_a_singular_field_wins(make: object) -> None:
    body = make()  # type: ignore[operator]
    check_split(wire.split(body), body)


def test_a_span_is_filed_under_its_last_trace_id() -> None:
    body = wire_bodies.trace_id_twice()
    assert [f.span_count for f in wire.split(body).fragments.values()] == [1, 1]


def test_a_span_without_span_id_is_refused_beside_one_that_carries_it_twice() -> None:
    split = wire.split(wire_bodies.span_id_twice_beside_none())
    assert (split.span_count, split.rejected_spans) == (1, 1)


def test_a_root_is_seen_beside_a_span_that_carries_its_parent_twice() -> None:
    assert [f.has_root for f in wire.split(wire_bodies.parent_twice_beside_root()).fragments.values()] == [True]


def test_facts_say_what_the_policies_ask() -> None:
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), start_time_unix_nano=2_000, end_time_unix_nano=9_000)
    child = ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8), flags=0x101,
                         start_time_unix_nano=3_000, end_time_unix_nano=12_000, trace_state="ot=th:8")
    child.status.code = child.status.STATUS_CODE_ERROR
    fragment = wire.split(req.SerializeToString()).fragments[trace_id]
    facts = TraceView(trace_id, fragment.data, fragment.facts)
    assert (facts.span_count, facts.has_root, facts.sampled, facts.has_trace_state) == (2, True, True, True)
    assert facts.status_codes == {0, 2} and not fragment.facts[1] & trace_facts.STATUS_OTHER
    assert (facts.start_time_unix_nano, facts.end_time_unix_nano, facts.duration_ns) == (2_000, 12_000, 10_000)
    assert facts.byte_size == fragment.size == len(fragment.data)
    assert facts.probabilistic_hash == fnv1a_64(trace_id, fnv1a_64(DEFAULT_HASH_SALT.encode()))


def test_a_span_without_a_start_starts_its_trace_at_zero() -> None:
    trace_id = os.urandom(16)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), start_time_unix_nano=5, end_time_unix_nano=7)
    ss.spans.add(trace_id=trace_id, span_id=os.urandom(8), end_time_unix_nano=6)
    fragment = wire.split(req.SerializeToString()).fragments[trace_id]
    facts = TraceView(trace_id, fragment.data, fragment.facts)
    assert (facts.start_time_unix_nano, facts.end_time_unix_nano) == (0, 7)


def test_facts_of_a_trace_merge_across_requests() -> None:
    trace_id = os.urandom(16)
    first = wire.split(mixed_request([trace_id]).SerializeToString()).fragments[trace_id]
    second = wire.split(mixed_request([trace_id]).SerializeToString()).fragments[trace_id]
    merged = TraceView(trace_id, first.data + second.data, wire.merge_facts(first.facts + second.facts))
    joined = TracesData.FromString(first.data + second.data)
    assert merged.span_count == 48 == sum(len(ss.spans) for rs in joined.resource_spans for ss in rs.scope_spans)
    assert merged.byte_size == len(first.data + second.data)


def test_fragments_share_each_resource_across_traces_and_requests() -> None:
    """Each resource's bytes are one object in every fragment of every request that carries it,
    and a fragment's own bytes sit between those heads in as few pieces as there are heads."""
    traces = [os.urandom(16) for _ in range(3)]
    req = mixed_request(traces)
    fragments = [f for _ in range(3) for f in wire.split(req.SerializeToString()).fragments.values()]
    heads: dict[bytes, set[int]] = {}
    for fragment in fragments:
        assert len(fragment.pieces) == 5  # own, head, own, head, own: two resources
        for head in fragment.pieces[1::2]:
            heads.setdefault(head, set()).add(id(head))
    assert all(len(objects) == 1 for objects in heads.values())
    # a head is the resource's fields: its resource and schema URL
    assert [ResourceSpans.FromString(head) for head in heads] == [
        ResourceSpans(resource=rs.resource, schema_url=rs.schema_url) for rs in req.resource_spans
    ]


def test_refused_spans_are_counted_with_the_otlp_message() -> None:
    body = wire_bodies.receiver_bad_bodies()[5]  # two spans of three with invalid IDs
    split = wire.split(body)
    assert (split.span_count, split.rejected_spans) == (1, 2)
    assert split.error_message == "2 span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
    assert wire.split(wire_bodies.real_request(20)).error_message == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xff\xff\xff", "truncated varint at byte 0"),
        (b"\x0a\x05abc", "length 5 at byte 0 runs past the end of its message"),
        (b"\x00" * 10, "field number 0 at byte 0"),
        (b"\x0f", "invalid wire type 7 at byte 0"),
        (b"\x0c", "end-group tag without a group at byte 0"),
        (b"\x0b\x08\x01", "group at byte 0 is not closed"),
        (b"\x0b\x14", "end-group tag at byte 1 does not close the group at byte 0"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes at byte 1"),
        (b"\x88\x80\x80\x80\x80\x00", "invalid tag at byte 0"),
        (b"\x09\x00", "truncated fixed64 at byte 0"),
    ],
)
def test_a_body_that_is_not_a_request_is_refused_with_what_and_where(body: bytes, message: str) -> None:
    with pytest.raises(wire.WireError) as refused:
        wire.split(body)
    assert str(refused.value) == message
    assert isinstance(refused.value, DecodeError)
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(body)


@pytest.mark.parametrize("level", list(wire_bodies.LEVEL_DEPTH))
def test_nesting_is_refused_past_upbs_recursion_limit(level: str) -> None:
    allowed = 100 - wire_bodies.LEVEL_DEPTH[level]
    wire.split(wire_bodies.nested_groups(allowed, level))
    with pytest.raises(wire.WireError, match="nesting deeper than 100 levels"):
        wire.split(wire_bodies.nested_groups(allowed + 1, level))
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(wire_bodies.nested_groups(allowed + 1, level))
    ExportTraceServiceRequest.FromString(wire_bodies.nested_groups(allowed, level))


def test_every_truncation_of_a_request_is_refused_or_split_as_upb_reads_it() -> None:
    body = wire_bodies.real_request(12)
    for end in range(len(body)):
        try:
            ExportTraceServiceRequest.FromString(body[:end])
        except DecodeError:
            with pytest.raises(wire.WireError):
                wire.split(body[:end])
        else:
            check_split(wire.split(body[:end]), body[:end])


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    with pytest.raises(wire.WireError, match="over the 64 MiB the wire walk accepts"):
        wire.split(b"\x00" * ((64 << 20) + 1))


def test_utf8_inside_spans_is_left_to_the_backend() -> None:
    """The walk does not read strings: a span name that is not UTF-8 passes, as it is."""
    trace_id = os.urandom(16)
    span = Span(trace_id=trace_id, span_id=os.urandom(8), name="ok").SerializeToString().replace(b"ok", b"\xff\xfe")
    body = wire_bodies.body_of(span)
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(body)
    assert span in wire.split(body).fragments[trace_id].data


def test_the_probabilistic_hash_is_fnv1a_over_salt_and_trace_id() -> None:
    trace_id = os.urandom(16)
    assert wire.DEFAULT_SALT_STATE == fnv1a_64(DEFAULT_HASH_SALT.encode())
    assert wire.fnv1a_64(trace_id, wire.DEFAULT_SALT_STATE) == fnv1a_64(trace_id, fnv1a_64(DEFAULT_HASH_SALT.encode()))
    assert wire.fnv1a_64(b"salt" + trace_id) == fnv1a_64(b"salt" + trace_id)
