"""Export requests laid out as any protobuf encoder may lay them out, for the split and wire tests."""

from __future__ import annotations

import os
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tailsampler.common.framing import field


def mixed_request(traces: list[bytes]) -> ExportTraceServiceRequest:
    """Two resources × two scopes, spans of several traces interleaved, as an SDK batch is."""
    req = ExportTraceServiceRequest()
    for r in range(2):
        rs = req.resource_spans.add(schema_url=f"https://schemas/{r}")
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc-{r}"
        for s in range(2):
            ss = rs.scope_spans.add(schema_url="https://scope")
            ss.scope.name = f"scope-{s}"
            for i in range(6):
                span = ss.spans.add(trace_id=traces[i % len(traces)], span_id=os.urandom(8), name=f"{r}.{s}.{i}")
                if i >= len(traces):
                    span.parent_span_id = os.urandom(8)
    return req


def random_body(rng: random.Random) -> bytes:
    """A request laid out as any protobuf encoder may: fields in any order (a span's too),
    unknown fields anywhere, runs and interleaving, invalid IDs, roots, trace states, spans and
    runs of 16 KiB and more."""
    traces = [rng.randbytes(16) for _ in range(rng.randint(1, 4))]
    odd = rng.random() < 0.5  # invalid IDs, huge spans and unknown fields in spans

    def span() -> bytes:
        trace_id = rng.choice(traces + [bytes(16), b"short", b""] if odd and rng.random() < 0.1 else traces)
        message = Span(trace_id=trace_id, span_id=bytes(8) if odd and rng.random() < 0.05 else rng.randbytes(8), name="op")
        if rng.random() < 0.8:
            message.parent_span_id = rng.randbytes(8)
        if rng.random() < 0.1:
            message.trace_state = "ot=th:8"
        if rng.random() < 0.05:
            message.attributes.add(key="payload").value.string_value = "x" * rng.choice((100, 20_000 if odd else 200))
        data = message.SerializeToString()
        if odd and rng.random() < 0.1:  # the name first: no ID where encoders put it
            data = b"\x2a\x02op" + data.replace(b"\x2a\x02op", b"", 1)
        return data + b"\xa0\x06\x01" if odd and rng.random() < 0.05 else data  # unknown field 100

    def message(header: bytes, children: list[bytes], schema_url: bytes) -> bytes:
        fields = [field(b"\x12", child) for child in children]
        for extra in (field(b"\x0a", header), field(b"\x1a", schema_url), b"\xa0\x06\x01"):
            if rng.random() < 0.7:  # present, at the front, at the end or anywhere between
                fields.insert(rng.choice((0, len(fields), rng.randint(0, len(fields)))), extra)
        return b"".join(fields)

    resources = []
    for r in range(rng.randint(1, 3)):
        scopes = []
        for _ in range(rng.randint(1, 3)):
            count = rng.choice((rng.randint(0, 12), 200))  # 200: runs over 16 KiB, with three-byte lengths
            spans = sorted((span() for _ in range(count)), key=lambda s: s[:18] if rng.random() < 0.7 else b"")
            scopes.append(message(b"\x0a\x04lib" + bytes([48 + r]), spans, b"https://scope"))
        resources.append(message(field(b"\x0a", b"\x0a\x0cservice.name\x12\x03\x0a\x01" + bytes([97 + r])), scopes, b"https://r"))
    return b"".join(field(b"\x0a", resource) for resource in resources)
