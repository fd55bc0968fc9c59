"""``tailsampler evaluate``: policies over traces read from OTLP protobuf and OTLP JSON files."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.collector import evaluate
from tailsampler.common.otlp_json import to_json

from .policy_traces import resource_spans, span

SLOW_ID = bytes.fromhex("11111111111111111111111111111111")
FAST_ID = bytes.fromhex("22222222222222222222222222222222")
ERR_ID = bytes.fromhex("33333333333333333333333333333333")

CONFIG = """
tail_sampling:
  policies:
    - {name: no-health, type: drop, drop: {drop_sub_policy: [{name: h, type: string_attribute, string_attribute: {key: url.path, values: [/health]}}]}}
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
    - {name: slow, type: latency, latency: {threshold_ms: 1000}}
    - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 1}}
"""


def run(tmp_path, files, *extra: str) -> tuple[int, str]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    args = parser.parse_args(["--config", str(config), *extra, *map(str, files)])
    out = io.StringIO()
    return evaluate.run(args, out), out.getvalue()


def requests():
    """The slow trace's spans arrive in two requests (one per file), as they would in real life."""
    first = ExportTraceServiceRequest(resource_spans=[
        resource_spans([span(root=True, start_ms=0, end_ms=100, trace_id=SLOW_ID)], {"service.name": "a"}),
        resource_spans([span(start_ms=0, end_ms=50, trace_id=FAST_ID, root=True)], {"service.name": "b"}),
    ])
    second = ExportTraceServiceRequest(resource_spans=[
        resource_spans([span(start_ms=900, end_ms=1500, trace_id=SLOW_ID)], {"service.name": "c"}),
        resource_spans([span(start_ms=2000, end_ms=2010, status=2, trace_id=ERR_ID, attributes={"url.path": "/health"})]),
    ])
    return first, second


def test_protobuf_files_text_output(tmp_path):
    first, second = requests()
    a, b = tmp_path / "a.pb", tmp_path / "b.pb"
    a.write_bytes(first.SerializeToString())
    b.write_bytes(TracesData(resource_spans=second.resource_spans).SerializeToString())
    code, out = run(tmp_path, [a, b])
    assert code == 0
    assert out.splitlines() == [
        f"{FAST_ID.hex()} keep budget no-health=not_sampled errors=not_sampled slow=not_sampled budget=sampled",
        f"{SLOW_ID.hex()} keep slow no-health=not_sampled errors=not_sampled slow=sampled budget=not_sampled",
        f"{ERR_ID.hex()} drop no-health no-health=dropped errors=- slow=- budget=-",
        "3 traces: 2 kept, 1 dropped",
        "  budget                   kept        1  dropped        0",
        "  no-health                kept        0  dropped        1",
        "  slow                     kept        1  dropped        0",
    ]


def test_json_lines_as_the_file_exporter_writes_them(tmp_path):
    first, second = requests()
    path = tmp_path / "traces.jsonl"
    path.write_bytes(to_json(first) + b"\n" + to_json(second) + b"\n")
    assert b'"traceId":"1111' in path.read_bytes()  # hex IDs, as the file exporter writes
    code, out = run(tmp_path, [path], "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["trace_id"], r["decision"], r["policy"]) for r in records] == [
        (FAST_ID.hex(), "keep", "budget"),
        (SLOW_ID.hex(), "keep", "slow"),
        (ERR_ID.hex(), "drop", "no-health"),
    ]
    assert records[1]["votes"] == {"no-health": "not_sampled", "errors": "not_sampled", "slow": "sampled", "budget": "not_sampled"}
    assert records[1]["spans"] == 2


def test_span_times_are_the_clock_for_stateful_policies(tmp_path):
    # one span/s budget: traces a simulated second apart are both kept, back to back only one
    reqs = [
        ExportTraceServiceRequest(resource_spans=[resource_spans([span(start_ms=t, end_ms=t + 1, trace_id=bytes([i + 1]) * 16)])])
        for i, t in enumerate([0, 1, 1500])
    ]
    path = tmp_path / "spaced.jsonl"
    path.write_bytes(b"\n".join(to_json(r) for r in reqs))
    code, out = run(tmp_path, [path])
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()[:3]] == ["keep", "drop", "keep"]
    assert out.splitlines()[3] == "3 traces: 2 kept, 1 dropped"


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"resourceSpans": []}\n{not json\n')
    code, _ = run(tmp_path, [path])
    assert code == 1
    assert f"{path}:2: body is not valid JSON" in capsys.readouterr().err
    code, _ = run(tmp_path, [tmp_path / "missing.pb"])
    assert code == 1
    assert "missing.pb: cannot read" in capsys.readouterr().err


def test_config_error_is_reported(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("tail_sampling:\n  policies:\n    - {name: x, type: latency, latency: {threshold_ms: -5}}\n")
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    code = evaluate.run(parser.parse_args(["--config", str(config), str(config)]), io.StringIO())
    assert code == 2
    assert "tail_sampling.policies[0].latency.threshold_ms: must be 0 or positive" in capsys.readouterr().err


def test_the_summary_goes_to_stderr_with_json_and_a_closed_pipe_ends_quietly(tmp_path):
    first, second = requests()
    path = tmp_path / "traces.jsonl"
    path.write_bytes(b"\n".join(to_json(r) for r in [first, second] * 200))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "tailsampler.collector.cli", "evaluate", "--config", str(config), str(path)]
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0 and len(as_json.stdout.splitlines()) == 3
    assert as_json.stderr.startswith("3 traces: ") and "kept" in as_json.stderr  # the summary, beside the JSON lines
    # many traces into a reader that stops after the first line: no traceback, exit 0
    many = tmp_path / "many.jsonl"
    many.write_bytes(b"\n".join(
        to_json(ExportTraceServiceRequest(resource_spans=[resource_spans([span(start_ms=i, end_ms=i + 1, trace_id=i.to_bytes(16, "big"))])]))
        for i in range(1, 3000)
    ))
    pipeline = f"set -o pipefail; {shlex.join(command[:-1])} {shlex.quote(str(many))} | head -1"
    piped = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
