"""The traffic model, request building and paced sending (into the generator's own sink)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys

import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tailsampler.loadgen.batching import Batcher
from tailsampler.loadgen.cli import main
from tailsampler.loadgen.layout import interleaved
from tailsampler.loadgen.model import SERVICES, TraceGenerator, TrafficShape
from tailsampler.loadgen.processes import NullServerProcess
from tailsampler.loadgen.sink import Sink
from tailsampler.loadgen.traffic import TrafficConfig, build_payloads, run_traffic
from tailsampler.loadgen.transport import GrpcTransport, Outcome
from tailsampler.common.otlp_json import to_json
from tailsampler.collector import wire
from tailsampler.policies.trace import TraceView, attribute
from tests.terminal import Terminal


def _trace_view(trace) -> TraceView:
    batcher = Batcher(1, 10_000)
    batcher.add_trace(trace)
    (payload,) = batcher.flush()
    return TraceView(trace.trace_id, payload.data, wire.facts_of(payload.data))


def test_traces_are_w3c_valid_and_carry_semantic_conventions() -> None:
    generator = TraceGenerator(TrafficShape(error_ratio=0.0, slow_ratio=0.0), seed=7)
    names: set[str] = set()
    for _ in range(200):
        trace = generator.next_trace(1_700_000_000_000_000_000)
        view = _trace_view(trace)
        assert len(trace.trace_id) == 16 and any(trace.trace_id)
        span_ids = [ref.span.span_id for ref in view.spans]
        assert all(len(s) == 8 and any(s) for s in span_ids) and len(set(span_ids)) == len(span_ids)
        assert {ref.span.trace_id for ref in view.spans} == {trace.trace_id}
        roots = [ref for ref in view.spans if not ref.span.parent_span_id]
        assert len(roots) == 1 and attribute(roots[0].resource.attributes, "service.name") == "api-gateway"
        assert roots[0].span.kind == Span.SPAN_KIND_SERVER
        assert attribute(roots[0].span.attributes, "http.route").startswith("/api/v1/")
        parents = set(span_ids)
        assert all(ref.span.parent_span_id in parents for ref in view.spans if ref.span.parent_span_id)
        for ref in view.spans:
            names.add(ref.span.name)
            assert ref.span.start_time_unix_nano <= ref.span.end_time_unix_nano
            assert attribute(ref.resource.attributes, "service.name") in SERVICES
            if ref.span.kind == Span.SPAN_KIND_SERVER:
                assert attribute(ref.span.attributes, "http.request.method") in ("GET", "POST")
                assert attribute(ref.span.attributes, "http.response.status_code") == 200
        # the root is the last span sent: it ends last, as an SDK exports it
        assert not Span.FromString(trace.spans[-1][1][3:] if trace.spans[-1][1][1] & 0x80 else
                                   trace.spans[-1][1][2:]).parent_span_id
        assert not trace.error and not trace.slow
    assert {"db-query", "SELECT shop.products", "POST /api/v1/checkout", "publish order-events"} <= names
    statements = {attribute(ref.span.attributes, "db.system") for trace in [generator.next_trace(0) for _ in range(50)]
                  for ref in _trace_view(trace).spans} - {None}
    assert statements == {"postgresql", "redis"}


def test_error_and_slow_traces_are_ground_truth() -> None:
    shape = TrafficShape(error_ratio=0.3, slow_ratio=0.3, slow_threshold_s=0.2)
    generator = TraceGenerator(shape, seed=3)
    counts = {"error": 0, "slow": 0}
    for _ in range(300):
        trace = generator.next_trace(0)
        view = _trace_view(trace)
        has_error = any(ref.span.status.code == Status.STATUS_CODE_ERROR for ref in view.spans)
        assert has_error == trace.error
        if has_error:  # the failure surfaces at the gateway as a 500
            assert attribute(view.root.span.attributes, "http.response.status_code") == 500
        assert view.duration_ns == trace.duration_ns
        if trace.slow:
            assert view.duration_ns >= 0.2e9
        else:
            assert view.duration_ns < 0.1e9  # normal traces stay under half the threshold
        counts["error"] += trace.error
        counts["slow"] += trace.slow
    assert 60 <= counts["error"] <= 120 and 60 <= counts["slow"] <= 120


def test_same_seed_same_traffic() -> None:
    def traces(seed: int) -> list:
        generator = TraceGenerator(TrafficShape(error_ratio=0.2), seed)
        return [generator.next_trace(1_000) for _ in range(50)]

    assert traces(5) == traces(5)
    assert [t.trace_id for t in traces(5)] != [t.trace_id for t in traces(6)]
    roots = [[r for p in build_payloads(TrafficShape(), 3000, seed=5) for r in p.roots] for _ in range(2)]
    assert roots[0] == roots[1]


def test_requests_hold_batch_spans_grouped_by_service() -> None:
    payloads = build_payloads(TrafficShape(), 5000, batch_spans=512, seed=1)
    assert all(p.spans == 512 for p in payloads[:-1]) and 0 < payloads[-1].spans <= 512
    roots = 0
    for payload in payloads:
        request = ExportTraceServiceRequest.FromString(payload.data)
        services = [attribute(rs.resource.attributes, "service.name") for rs in request.resource_spans]
        assert len(services) == len(set(services))
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert len(spans) == payload.spans
        assert {s.trace_id for s in spans if not s.parent_span_id} == set(payload.roots)
        roots += len(payload.roots)
    assert roots == len({t for p in payloads for t in p.roots})


def _scopes(body: bytes) -> list[list[bytes]]:
    """Each scope's spans, in order, as their serialised bytes."""
    request = ExportTraceServiceRequest.FromString(body)
    return [[s.SerializeToString() for s in ss.spans] for rs in request.resource_spans for ss in rs.scope_spans]


def _dealt_trace_by_trace(spans: list[bytes]) -> bool:
    """Whether the first round of a scope's spans holds one span of every trace in it."""
    traces = [Span.FromString(span).trace_id for span in spans]
    distinct = len(set(traces))
    return len(set(traces[:distinct])) == distinct


def test_interleaved_requests_deal_each_scopes_spans_out_trace_by_trace() -> None:
    contiguous = build_payloads(TrafficShape(), 3000, seed=4, layout="contiguous")
    changed = 0
    for payload in contiguous:
        dealt = interleaved(payload.data)
        assert len(dealt) == len(payload.data)
        for before, after in zip(_scopes(payload.data), _scopes(dealt)):
            assert sorted(before) == sorted(after), "the same spans, byte for byte"
            assert _dealt_trace_by_trace(after)
            changed += before != after
    assert changed, "some scope holds spans of several traces"
    built = build_payloads(TrafficShape(), 3000, seed=4, layout="interleaved")
    assert [p.roots for p in built] == [p.roots for p in contiguous]
    assert all(_dealt_trace_by_trace(spans) for p in built for spans in _scopes(p.data))
    assert not all(_dealt_trace_by_trace(spans) for p in contiguous for spans in _scopes(p.data))


def test_requests_for_several_agents_carry_the_same_traces() -> None:
    one = build_payloads(TrafficShape(), 3000, seed=9)
    three = build_payloads(TrafficShape(), 3000, seed=9, targets=3)
    assert {p.target for p in three} == {0, 1, 2}
    assert sorted(r for p in three for r in p.roots) == sorted(r for p in one for r in p.roots)
    assert sum(p.spans for p in three) == sum(p.spans for p in one)


def test_every_round_of_requests_carries_trace_ids_never_sent_before() -> None:
    rounds = [{r for p in build_payloads(TrafficShape(), 2000, seed=1000 + n) for r in p.roots} for n in range(3)]
    assert all(rounds) and len(set.union(*rounds)) == sum(map(len, rounds))


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="layout must be one of interleaved, contiguous, got 'shuffled'"):
        build_payloads(TrafficShape(), 100, layout="shuffled")


def test_otlp_json_has_hex_ids_and_integer_enums() -> None:
    (payload,) = build_payloads(TrafficShape(error_ratio=1.0), 10, batch_spans=10_000, seed=2)
    document = msgspec.json.decode(to_json(ExportTraceServiceRequest.FromString(payload.data)))
    spans = [s for rs in document["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    (root,) = [s for s in spans if "parentSpanId" not in s]
    original = TraceView(b"", payload.data, wire.facts_of(payload.data)).root.span
    assert root["traceId"] == original.trace_id.hex() and root["spanId"] == original.span_id.hex()
    assert root["kind"] == 2 and root["status"]["code"] == 2
    assert root["startTimeUnixNano"] == str(original.start_time_unix_nano)
    for span in spans:  # back to protobuf JSON's base64 IDs, to compare the whole request
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    assert json_format.ParseDict(document, ExportTraceServiceRequest()) == ExportTraceServiceRequest.FromString(
        payload.data
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"targets": ("10.0.0.5:4317",)}, "only loopback addresses"),
        ({"targets": ("example.com:4317",)}, "only loopback addresses"),
        ({"targets": ("127.0.0.1",)}, "expected host:port"),
        ({"protocol": "thrift"}, "protocol must be one of"),
        ({"spans_per_second": 10.0}, "exactly one of traces-per-second and spans-per-second"),
        ({"count": 10}, "exactly one of duration and count"),
        ({"late_ratio": 1.5}, "late-ratio must be between 0 and 1"),
        ({"shape": None}, None),
    ],
)
def test_bad_traffic_settings_are_refused_clearly(changes: dict, message: str | None) -> None:
    if message is None:
        with pytest.raises(ValueError, match="error-ratio must be between 0 and 1"):
            TrafficShape(error_ratio=2)
        return
    with pytest.raises(ValueError, match=message):
        TrafficConfig(**changes)


async def test_paced_traffic_reaches_the_sink_whole_with_late_spans() -> None:
    sink = Sink()
    endpoint = await sink.start()
    try:
        config = TrafficConfig(targets=(endpoint,), traces_per_second=400, duration_s=None, count=120,
                               late_ratio=0.2, late_delay_s=0.1, batch_spans=64, seed=11)
        result = await run_traffic(config)
    finally:
        await sink.stop()
    assert result.traces == 120 and len(result.ledger) == 120
    assert result.failed_requests == 0 and result.late_spans > 0
    assert result.spans == sum(t.span_count for t in result.ledger.values()) == sink.span_deliveries
    assert {t: len(spans) for t, spans in sink.spans.items()} == {
        t: sent.span_count for t, sent in result.ledger.items()
    }
    assert result.elapsed_s >= 119 / 400  # paced, not a burst


async def test_spans_of_one_trace_go_through_several_targets() -> None:
    sinks = [Sink(), Sink()]
    endpoints = [await s.start() for s in sinks]
    try:
        config = TrafficConfig(targets=tuple(endpoints), traces_per_second=1000, duration_s=None, count=40)
        result = await run_traffic(config)
    finally:
        for sink in sinks:
            await sink.stop()
    split = [t for t in result.ledger if all(t in s.spans for s in sinks)]
    assert len(split) == 40  # every trace calls services on both targets
    for trace_id, sent in result.ledger.items():
        assert sum(len(s.spans[trace_id]) for s in sinks) == sent.span_count


class _LoggingTransport(GrpcTransport):
    """The real gRPC transport, remembering the order in which request bodies went out."""

    def __init__(self, targets: list[str]) -> None:
        super().__init__(targets)
        self.sent: list[bytes] = []

    async def export(self, target: int, body: bytes) -> Outcome:
        self.sent.append(body)
        return await super().export(target, body)


async def test_late_spans_are_sent_after_their_root() -> None:
    sink = Sink()
    endpoint = await sink.start()
    transport = _LoggingTransport([endpoint])
    try:
        config = TrafficConfig(targets=(endpoint,), traces_per_second=500, duration_s=None, count=60,
                               late_ratio=0.3, late_delay_s=0.05, batch_spans=100, concurrency=1, seed=2)
        result = await run_traffic(config, transport)
    finally:
        await transport.close()
        await sink.stop()
    root_request: dict[bytes, int] = {}
    spans_by_request = []
    for index, body in enumerate(transport.sent):
        request = ExportTraceServiceRequest.FromString(body)
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        spans_by_request.append(spans)
        root_request.update({s.trace_id: index for s in spans if not s.parent_span_id})
    after_root = sum(
        1 for index, spans in enumerate(spans_by_request) for s in spans if index > root_request[s.trace_id]
    )
    assert result.late_spans > 20 and after_root == result.late_spans
    assert sink.span_deliveries == result.spans


def test_run_command_sends_to_the_null_server(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    null = asyncio.run(NullServerProcess(tmp_path).start())
    try:
        code = main(["run", "--target", null.endpoint, "--count", "50", "--traces-per-second", "500",
                     "--batch-spans", "128"])
    finally:
        asyncio.run(null.stop())
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["traces"] == 50 and summary["failed_requests"] == 0
    assert summary["requests"] >= -(-summary["spans"] // 128)  # 128-span requests (and flushed rests)


def test_run_shows_its_progress_on_a_terminal(tmp_path) -> None:
    async def null_server() -> NullServerProcess:
        return await NullServerProcess(tmp_path).start()

    server = asyncio.run(null_server())
    terminal = Terminal([sys.executable, "-m", "tailsampler.loadgen.cli", "run", "--target", server.endpoint,
                         "--duration", "1s", "--traces-per-second", "100"])
    try:
        assert terminal.process.wait(30) == 0, terminal.read()
        last = terminal.read().replace("\r", "\n").splitlines()
        bar = [line for line in last if "spans/s" in line][-1]
        assert re.search(r"sending .*100%\s+[\d,]+ spans\s+[\d,]+ spans/s", bar), bar
    finally:
        terminal.close()
        asyncio.run(server.stop())
