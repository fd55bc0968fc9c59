"""The benchmark in its smoke mode: every measurement runs against real processes and the
result is well formed (JSON and Markdown)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tailsampler.loadgen.bench import profile_summary
from tailsampler.loadgen.cli import main

_METRICS = {
    "memory": {"ingest_spans_per_second", "ingest_ratio_to_null", "ingest_cpu_us_per_span",
               "rss_bytes_per_buffered_span",
               "rss_to_wire_bytes", "collector_cpu_us_per_span", "decision_latency_p50_s",
               "decision_latency_p99_s", "decision_latency_samples"},
}
_METRICS["redis"] = _METRICS["memory"] | {
    "redis_used_memory_per_buffered_span", "redis_used_memory_to_wire_bytes", "redis_cpu_us_per_span"}
_METRICS["wal"] = _METRICS["memory"] | {
    "wal_disk_bytes_per_buffered_span", "wal_disk_to_wire_bytes", "ingest_cpu_to_memory", "collector_cpu_to_memory"}


def test_bench_smoke_produces_a_well_formed_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(["bench", "--smoke", "--workdir", str(tmp_path / "work"),
                 "--json", str(json_path), "--markdown", str(markdown_path)])
    result = json.loads(json_path.read_text())
    missed = [label for label, target in result["targets"].items() if target["met"] is False]
    assert code == (1 if missed else 0), "bench exits 1 exactly when a target is missed"
    said = capsys.readouterr().err
    assert all(label in said for label in missed), said
    assert result["options"]["rounds"] == 1 and result["spans_per_round"] >= 4096
    assert 100 < result["wire_bytes_per_span"] < 1000
    null = result["null_server"]
    assert null["median"] > 0 and len(null["spans_per_second"]) == 3 and null["cpu_median"] > 0  # a round per buffer mode
    for mode, metrics in _METRICS.items():
        data = result["modes"][mode]
        assert data["available"], data.get("reason")
        assert set(data["median"]) == metrics and all(len(v) == 1 for v in data["rounds"].values())
        assert data["median"]["ingest_spans_per_second"] > 0
        assert data["median"]["collector_cpu_us_per_span"] > 0
        after_root = result["options"]["after_root_s"]
        assert after_root <= data["median"]["decision_latency_p50_s"] <= data["median"]["decision_latency_p99_s"]
        assert data["median"]["decision_latency_samples"] > 10
    assert result["modes"]["redis"]["median"]["redis_used_memory_per_buffered_span"] > 0
    wal = result["modes"]["wal"]["median"]
    assert 0.3 < wal["wal_disk_to_wire_bytes"] < 3, "the log holds about the wire bytes of what is buffered"
    assert wal["collector_cpu_to_memory"] == wal["collector_cpu_us_per_span"] / result["modes"]["memory"]["median"]["collector_cpu_us_per_span"]
    overload = result["modes"]["overload"]
    assert overload["available"], overload.get("reason")
    figures = overload["median"]
    assert figures["sent_traces_per_second"] > figures["sustainable_traces_per_second"], "beyond what the buffer holds"
    assert figures["relief_active_share"] > 0 and figures["decided_at_once_share"] > 0
    assert figures["without_relief_relief_active_share"] == 0 and figures["without_relief_decided_early_share"] > 0
    assert figures["rss_peak_bytes"] >= figures["rss_idle_bytes"] > 0
    targets = result["targets"]
    assert len(targets) == 10 and all(t["measured"] is not None and t["met"] in (True, False)
                                     for t in targets.values())
    table = markdown_path.read_text()
    assert table.startswith("# Benchmarks\n")
    assert "| metric | null server | tailsampler memory | tailsampler memory + WAL | tailsampler redis | target |" in table
    assert "| at 3× the sustainable load | relief on | relief off |" in table
    assert table.count("\n| ") >= 34


def test_bench_reports_a_buffer_that_cannot_start(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--modes", "redis", "--workdir", str(tmp_path / "work"),
                 "--json", str(json_path), "--markdown", str(tmp_path / "bench.md")]) == 0
    redis = json.loads(json_path.read_text())["modes"]["redis"]
    assert redis["available"] is False and "not answering" in redis["reason"]
    assert "**redis mode unavailable:**" in (tmp_path / "bench.md").read_text()


def test_profile_summary_lists_hot_functions(tmp_path: Path) -> None:
    path, script = tmp_path / "run.prof", tmp_path / "work.py"
    script.write_text("print(sum(range(10**5)))\n")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(path), str(script)], check=True)
    rows = profile_summary(path)
    assert rows and {"function", "own_share", "cumulative_share", "calls"} <= set(rows[0])
    assert 0 < sum(r["own_share"] for r in rows) <= 1 + 0.00005 * len(rows)  # shares are rounded to 4 places


def _closed_port() -> int:
    from tailsampler.loadgen.processes import free_port

    return free_port()


@pytest.mark.parametrize("stage", ["parse", "split", "decide", "pipeline", "wal"])
def test_hotpath_runs_one_stage_and_reports_its_cpu_per_span(stage: str, capsys) -> None:
    assert main(["hotpath", stage, "--spans", "600", "--repeat", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stage"] == stage and result["repeat"] == 1
    assert 600 <= result["spans"] < 700  # whole traces: a few more than asked for
    assert result["cpu_us_per_span"] > 0


def test_hotpath_without_repeats_does_only_the_setup(capsys) -> None:
    assert main(["hotpath", "split", "--spans", "100", "--repeat", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_us_per_span"] is None
