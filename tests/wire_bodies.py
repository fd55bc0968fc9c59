"""Requests for the wire tests: real ones, the layouts protobuf allows, and hostile ones."""

from __future__ import annotations

import os
import random

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tailsampler.common.framing import field


def span_bytes(**fields: object) -> bytes:
    return Span(**fields).SerializeToString()  # type: ignore[arg-type]


def body_of(*spans: bytes, resource: bytes = b"\x0a\x04\x0a\x02\x0a\x00", scope: bytes = b"\x0a\x01s") -> bytes:
    """One resource, one scope, these span payloads."""
    inner = field(b"\x0a", scope) + b"".join(field(b"\x12", s) for s in spans)
    return field(b"\x0a", field(b"\x0a", resource) + field(b"\x12", inner))


def ids() -> dict[str, bytes]:
    return {"trace_id": os.urandom(16), "span_id": os.urandom(8)}


def trace_id_twice() -> bytes:
    """A span whose trace_id occurs twice: protobuf files it under the second."""
    first, second = os.urandom(16), os.urandom(16)
    span = b"\x0a\x10" + first + b"\x0a\x10" + second + b"\x12\x08" + os.urandom(8) + b"\x22\x08" + os.urandom(8)
    return body_of(span, span_bytes(trace_id=first, span_id=os.urandom(8), parent_span_id=os.urandom(8)))


def span_id_twice_beside_none() -> bytes:
    """A span without span_id next to one that carries it twice: the first is refused."""
    trace = os.urandom(16)
    twice = b"\x0a\x10" + trace + b"\x12\x08" + os.urandom(8) + b"\x12\x08" + os.urandom(8)
    return body_of(twice, b"\x0a\x10" + trace + b"\x22\x08" + os.urandom(8))


def parent_twice_beside_root() -> bytes:
    """A root next to a span that carries parent_span_id twice: the root is seen."""
    trace = os.urandom(16)
    twice = span_bytes(trace_id=trace, span_id=os.urandom(8), parent_span_id=os.urandom(8)) + b"\x22\x08" + os.urandom(8)
    return body_of(twice, span_bytes(trace_id=trace, span_id=os.urandom(8)))


def last_occurrences() -> bytes:
    """Singular fields given twice, the last one winning: an empty parent (a root), a start and an
    end overwritten, flags cleared, a trace state emptied, and statuses that merge."""
    trace = os.urandom(16)
    root = span_bytes(trace_id=trace, span_id=os.urandom(8), parent_span_id=os.urandom(8)) + b"\x22\x00"
    times = span_bytes(trace_id=trace, span_id=os.urandom(8), parent_span_id=os.urandom(8), start_time_unix_nano=5,
                       end_time_unix_nano=10**19, flags=1, trace_state="a=b")
    times += b"\x39" + (2000).to_bytes(8, "little") + b"\x41" + (3000).to_bytes(8, "little") + b"\x85\x01" + bytes(4) + b"\x1a\x00"
    error_kept = span_bytes(**ids(), parent_span_id=os.urandom(8), status=Status(code=Status.STATUS_CODE_ERROR))
    error_kept += b"\x7a\x03\x12\x01x"  # a second status {message} merges: the code stays
    error_cleared = span_bytes(**ids(), parent_span_id=os.urandom(8), status=Status(code=Status.STATUS_CODE_ERROR)) + b"\x7a\x02\x18\x00"
    other = span_bytes(**ids(), parent_span_id=os.urandom(8)) + b"\x7a\x0b\x18" + b"\xff" * 9 + b"\x01"  # code -1: not OTLP's
    truncated = span_bytes(**ids(), parent_span_id=os.urandom(8)) + b"\x7a\x06\x18\x82\x80\x80\x80\x10"  # 2 + 2^32: ERROR
    return body_of(root, times, error_kept, error_cleared, other, truncated)


def known_fields_of_other_wire_types() -> bytes:
    """Known fields with another wire type than their own are unknown fields: skipped, not read."""
    trace = os.urandom(16)
    span = span_bytes(trace_id=trace, span_id=os.urandom(8), start_time_unix_nano=7, end_time_unix_nano=9)
    span += b"\x08\x05"  # trace_id as a varint
    span += b"\x3a\x03abc"  # start_time_unix_nano length-delimited (not 8 bytes: no packed read)
    span += b"\x45\x01\x02\x03\x04"  # end_time_unix_nano as fixed32
    span += b"\x82\x01\x01\x07"  # flags length-delimited
    span += b"\x78\x02"  # status as a varint
    span += b"\x7b\x18\x02\x7c"  # status as a group
    span += b"\x7a\x03\x1a\x01\x02"  # status code length-delimited
    span += b"\x22\x00" + b"\x20\x01"  # an empty parent, then parent_span_id as a varint: a root
    return body_of(span)


def nested_groups(depth: int, level: str) -> bytes:
    """A well-formed group ``depth`` deep at the request, resource, scope, span or status level."""
    groups = b"\x5b" * depth + b"\x5c" * depth  # field 11, start and end group
    trace = os.urandom(16)
    if level == "request":
        return body_of(span_bytes(trace_id=trace, span_id=os.urandom(8))) + groups
    if level == "resource":
        inner = field(b"\x12", field(b"\x12", span_bytes(trace_id=trace, span_id=os.urandom(8)))) + groups
        return field(b"\x0a", inner)
    if level == "scope":
        inner = field(b"\x12", span_bytes(trace_id=trace, span_id=os.urandom(8))) + groups
        return field(b"\x0a", field(b"\x12", inner))
    if level == "span":
        return body_of(span_bytes(trace_id=trace, span_id=os.urandom(8)) + groups)
    return body_of(span_bytes(trace_id=trace, span_id=os.urandom(8)) + field(b"\x7a", groups))


# how many levels of messages sit above each level's own fields: the walk allows 100 in all
LEVEL_DEPTH = {"request": 0, "resource": 1, "scope": 2, "span": 3, "status": 4}


def real_request(spans: int = 40, seed: int = 3) -> bytes:
    """A request as the benchmark's SDK-like traffic makes them."""
    from tailsampler.loadgen.model import TrafficShape
    from tailsampler.loadgen.traffic import build_payloads

    return build_payloads(TrafficShape(error_ratio=0.2, slow_ratio=0.1), spans, batch_spans=spans, seed=seed)[0].data


def receiver_bad_bodies() -> list[bytes]:
    """The bodies the receiver tests send that are not requests, or hold refused spans."""
    from tests.otlp_data import request

    invalid = request(os.urandom(16), 3)
    spans = invalid.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = bytes(16)
    spans[1].span_id = b"\x01\x02"
    good = request(os.urandom(16), 5).SerializeToString()
    return [
        b"\xff\xff\xff\xff", b"\xff{not otlp", b"hello", b"x" * 100, b"\x00" * 4096, invalid.SerializeToString(),
        good[:-3], b"\x0a\x05abc", good + b"\x0a", good + b"\x0f",
    ]


def random_mutation(body: bytes, rng: random.Random) -> bytes:
    """A few random edits of a real request: bytes flipped, inserted, removed, slices repeated."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1) if data else 0
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif kind == 2 and data:
            del data[at : at + rng.randint(1, 8)]
        elif kind == 3 and data:
            end = min(len(data), at + rng.randint(1, 40))
            data[at:at] = data[at:end]
        else:
            del data[at:]
    return bytes(data)
