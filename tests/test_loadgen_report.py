"""The sampling-quality report: its arithmetic on a known run, and runs through real collectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tailsampler.loadgen.cli import main
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import CollectorProcess, collector_config, free_port
from tailsampler.loadgen.quality import QualityReport, head_outcome, tail_outcome
from tailsampler.loadgen.report import ReportOptions, run_report
from tailsampler.loadgen.sink import Sink
from tailsampler.loadgen.traffic import SentTrace, TrafficConfig
from tests.waiting import eventually


def _tid(n: int, head_kept: bool) -> bytes:
    """A trace ID whose low 56 bits put it inside (or outside) a 10% head sample."""
    return bytes([n]) + bytes(8) + ((1).to_bytes(7, "big") if head_kept else b"\xff" * 7)


def _spans(n: int) -> list[bytes]:
    return [bytes([n, i + 1]) + bytes(6) for i in range(12)]


def test_report_arithmetic_on_a_known_run() -> None:
    e1, e2, both, s1, s2 = _tid(1, True), _tid(2, False), _tid(3, True), _tid(4, False), _tid(5, False)
    normal = [_tid(10 + i, i == 0) for i in range(5)]
    ledger = {
        e1: SentTrace(5, error=True, slow=False),
        e2: SentTrace(4, error=True, slow=False),
        both: SentTrace(2, error=True, slow=True),
        s1: SentTrace(6, error=False, slow=True),
        s2: SentTrace(3, error=False, slow=True),
        **{t: SentTrace(10, error=False, slow=False) for t in normal},
    }
    delivered = {
        e1: dict.fromkeys(_spans(1)[:5], 1),
        e2: {**dict.fromkeys(_spans(2)[:4], 1), _spans(2)[0]: 2},  # one span delivered twice
        both: dict.fromkeys(_spans(3)[:2], 1),
        s1: dict.fromkeys(_spans(4)[:6], 1),
        s2: dict.fromkeys(_spans(5)[:2], 1),  # one of its three spans never arrived
        normal[0]: dict.fromkeys(_spans(10)[:10], 1),
        _tid(99, True): dict.fromkeys(_spans(99)[:3], 1),  # a trace this run never sent
    }
    tail = tail_outcome(ledger, delivered)
    assert (tail.traces_sent, tail.traces_stored, tail.spans_sent, tail.spans_stored) == (10, 6, 70, 29)
    assert tail.storage_reduction == pytest.approx(1 - 29 / 70)
    assert (tail.error_traces, tail.error_capture) == (3, 1.0)
    assert (tail.slow_traces, tail.slow_capture) == (2, 1.0)  # the failing slow trace counts as an error
    assert (tail.normal_traces, tail.normal_keep) == (5, 0.2)
    assert tail.complete == pytest.approx(5 / 6)
    assert (tail.duplicate_deliveries, tail.unknown_spans) == (1, 3)

    head = head_outcome(ledger, 0.1)
    assert (head.traces_stored, head.spans_stored) == (3, 17)
    assert head.storage_reduction == pytest.approx(1 - 17 / 70)
    assert head.error_capture == pytest.approx(2 / 3)
    assert (head.slow_capture, head.normal_keep, head.complete, head.duplicate_deliveries) == (0.0, 0.2, 1.0, 0)

    report = QualityReport(tail, head, 0.1, run={})
    assert report.checks() == {
        "error capture 100%": True,
        "slow capture 100%": True,
        "storage reduction >= 90%": False,
        "kept traces complete 100%": False,
        "0 duplicate deliveries": False,
    }
    table = report.markdown()
    assert "| error-trace capture (3 traces) | 100.0% | 66.7% | 100.0% |" in table
    assert "| kept traces complete | 83.3% | 100.0% | 100.0% |" in table
    assert "| duplicate deliveries | 1 | 0 | 0 |" in table
    assert "3 span(s) at the sink belonged to traces this run did not send." in table
    assert "Targets missed: storage reduction >= 90%, kept traces complete 100%, 0 duplicate deliveries." in table
    assert json.loads(json.dumps(report.to_dict()))["tail"]["spans_stored"] == 29


async def test_sink_receives_what_the_collector_exports(tmp_path: Path) -> None:
    sink = Sink()
    sink_endpoint = await sink.start()
    config = collector_config(sink_endpoint, [{"name": "all", "type": "always_sample"}], "1s", "200ms")
    collector = await CollectorProcess(config, tmp_path).start()
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    )
    tracer = provider.get_tracer("test")
    try:
        for order in range(3):
            with tracer.start_as_current_span("POST /orders") as root:
                root.set_attribute("http.route", "/orders")
                with tracer.start_as_current_span("INSERT orders") as child:
                    child.set_attribute("db.system", "postgresql")
                    if order == 1:
                        child.set_status(Status(StatusCode.ERROR, "deadlock"))
        provider.shutdown()
        sent: dict[bytes, set[bytes]] = {}
        for span in memory.get_finished_spans():
            sent.setdefault(span.context.trace_id.to_bytes(16, "big"), set()).add(
                span.context.span_id.to_bytes(8, "big"))

        def all_arrived() -> bool:
            return {t: set(s) for t, s in sink.spans.items()} == sent

        await eventually(all_arrived, timeout=20)
        assert all(count == 1 for spans in sink.spans.values() for count in spans.values())
        assert sink.span_deliveries == 6
    finally:
        await collector.stop()
        await sink.stop()


def test_report_command_starts_a_collector_and_meets_the_targets(tmp_path: Path) -> None:
    json_path, markdown_path = tmp_path / "report.json", tmp_path / "report.md"
    code = main([
        "report", "--count", "400", "--traces-per-second", "400", "--error-ratio", "0.02",
        "--slow-ratio", "0.02", "--slow-threshold", "300ms", "--late-ratio", "0.05", "--late-delay", "1s",
        "--batch-spans", "256", "--seed", "4", "--json", str(json_path), "--markdown", str(markdown_path),
    ])
    result = json.loads(json_path.read_text())
    tail, head = result["tail"], result["head"]
    assert code == 0, markdown_path.read_text()
    assert tail["traces_sent"] == 400 and result["run"]["traffic"]["late_spans"] > 0
    assert tail["error_traces"] > 0 and tail["slow_traces"] > 0
    assert (tail["error_capture"], tail["slow_capture"], tail["complete"]) == (1.0, 1.0, 1.0)
    assert tail["storage_reduction"] >= 0.9 and tail["duplicate_deliveries"] == 0
    stats = result["run"]["collector_stats"]
    assert stats["traces"]["kept"] == tail["traces_stored"]
    assert stats["spans"]["received"] == tail["spans_sent"]
    assert head["traces_sent"] == 400 and head["complete"] == 1.0
    assert all(result["checks"].values())
    assert "| metric | tailsampler | head-based 10% | target |" in markdown_path.read_text()


async def test_report_against_a_running_collector_over_http_json(tmp_path: Path) -> None:
    sink_endpoint = f"127.0.0.1:{free_port()}"
    config = collector_config(sink_endpoint, [
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    ], "2s", "300ms")
    collector = await CollectorProcess(config, tmp_path).start()
    try:
        traffic = TrafficConfig(protocol="http/json", compress=True, traces_per_second=300, duration_s=None,
                                count=150, shape=TrafficShape(error_ratio=0.1), seed=9)
        report = await run_report(ReportOptions(
            traffic=traffic, targets=(collector.http_endpoint,), sink=sink_endpoint,
            admin=collector.admin.endpoint, settle_s=0.5,
        ))
        stats = await collector.admin.stats()
    finally:
        await collector.stop()
    tail = report.tail
    assert tail.traces_sent == 150 and tail.spans_sent == stats["spans"]["received"]
    assert tail.traces_stored == tail.error_traces == stats["traces"]["kept"] > 0
    assert (tail.error_capture, tail.normal_keep, tail.complete) == (1.0, 0.0, 1.0)
    assert report.run["settled"] is True


def test_report_refuses_conflicting_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--target", "127.0.0.1:4317", "--count", "1"]) == 2
    assert "with --target, give --sink" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--target", "192.0.2.1:4317"])
    assert "only loopback addresses" in capsys.readouterr().err


@pytest.mark.parametrize("example", ["local.yaml", "redis.yaml"])
def test_report_meets_its_targets_with_the_shipped_example_configs(example: str, tmp_path: Path) -> None:
    """Out of the box: the slow threshold follows the config's latency policy (5 s), the first
    trace fails so error capture is rated, and a redis config runs on a Redis of the report's own."""
    config = Path(__file__).resolve().parent.parent / "examples" / example
    json_path = tmp_path / "report.json"
    code = main(["report", "--config", str(config), "--count", "300", "--traces-per-second", "300",
                 "--json", str(json_path), "--markdown", str(tmp_path / "report.md")])
    result = json.loads(json_path.read_text())
    assert code == 0, (tmp_path / "report.md").read_text()
    assert result["run"]["slow_threshold_s"] == 5.0
    assert result["tail"]["error_traces"] >= 1 and result["tail"]["error_capture"] == 1.0
    assert result["tail"]["slow_traces"] >= 1 and result["tail"]["slow_capture"] == 1.0


def test_loadgen_help_says_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for command, expected in (("run", "(default: 0.001)"), ("report", "(default: 120.0)"), ("bench", "attributes,wal,redis,cluster,overload)")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert expected in " ".join(capsys.readouterr().out.split())
