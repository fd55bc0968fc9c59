"""The file exporter: OTLP/JSON lines the OpenTelemetry Collector would write, and rotation."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from tailsampler.common.otlp_json import request_from_json
from tailsampler.common.verdict import Verdict
from tailsampler.storage import KeptTrace
from tailsampler.storage.jsonl_file import json_lines
from tests.storage_support import kept, metric, running, spec


async def test_one_otlp_json_request_per_trace_with_hex_ids(tmp_path: Path) -> None:
    path = tmp_path / "out" / "traces.jsonl"
    traces = [kept(3, error=True), kept(1)]
    async with running(spec(type="file", path=str(path))) as [exporter]:
        for trace in traces:
            await exporter.submit(trace)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    for line, trace in zip(lines, traces):
        data = json.loads(line)
        span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert span["traceId"] == trace.trace_id.hex()
        assert len(span["spanId"]) == 16 and int(span["spanId"], 16) >= 0
        assert span["kind"] == 2  # enums as integers
        assert isinstance(span["startTimeUnixNano"], str)
        assert request_from_json(line).SerializeToString() == trace.data
    last = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][-1]
    assert last["status"]["code"] == 2
    assert last["parentSpanId"] == json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]


async def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    for _ in range(2):
        async with running(spec(type="file", path=str(path))) as [exporter]:
            await exporter.submit(kept(1))
    assert len(path.read_bytes().splitlines()) == 2


async def test_rotation_keeps_max_backups_of_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    traces = [kept(2) for _ in range(12)]
    line_size = len(b"".join(json_lines(traces[:1])))
    limit_mb = (line_size * 2.5) / (1024 * 1024)  # two lines fit, a third rotates
    exporter_spec = spec(type="file", path=str(path), rotation={"max_megabytes": limit_mb, "max_backups": 2})
    async with running(exporter_spec) as [exporter]:
        for trace in traces:
            await exporter.submit(trace)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= limit_mb * 1024 * 1024
    newest_first = [path, path.with_name("traces.jsonl.1"), path.with_name("traces.jsonl.2")]
    kept_ids = [
        json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
        for file in reversed(newest_first)
        for line in file.read_bytes().splitlines()
    ]
    assert kept_ids == [t.trace_id.hex() for t in traces[-6:]]


async def test_an_unparsable_trace_is_refused_and_the_exporter_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    registry = CollectorRegistry()
    good = kept(1)
    broken = KeptTrace(good.trace_id, b"\xff\xff\xff", Verdict(True, "baseline"))
    async with running(spec(type="file", path=str(path), batch_max_traces=1), registry=registry) as [exporter]:
        await exporter.submit(broken)
        await exporter.submit(good)
    assert len(path.read_bytes().splitlines()) == 1
    assert metric(registry, "tailsampler_exporter_traces_failed_total", exporter="file", reason="rejected") == 1
    assert metric(registry, "tailsampler_exporter_traces_exported_total", exporter="file") == 1
