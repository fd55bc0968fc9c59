"""The benchmark in its smoke mode: every measurement runs against real processes and the
result is well formed (JSON and Markdown)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tailsampler.loadgen.bench import MODES, BenchOptions, profile_summary
from tailsampler.loadgen.cli import build_parser, main
from tailsampler.loadgen.processes import MALLOC_PINS, AdminClient, NullServerProcess, cpu_seconds

_LATENCY = {"decision_latency_p50_s", "decision_latency_p99_s", "decision_latency_samples"}
_HOLD = {"ingest_spans_per_second", "ingest_ratio_to_null", "ingest_cpu_us_per_span",
         "rss_bytes_per_buffered_span", "rss_to_wire_bytes"}
_TO_MEMORY = {"ingest_cpu_to_memory", "collector_cpu_to_memory"}
_METRICS = {"memory": _HOLD | {"collector_cpu_us_per_span"} | _LATENCY}
_METRICS["memory-contiguous"] = _HOLD | {"collector_cpu_us_per_span"} | _TO_MEMORY
_METRICS["attributes"] = {"collector_cpu_us_per_span", "collector_cpu_to_memory"}
_METRICS["redis"] = _METRICS["memory"] | {
    "redis_used_memory_per_buffered_span", "redis_used_memory_to_wire_bytes", "redis_cpu_us_per_span"}
_METRICS["wal"] = _METRICS["memory"] | _TO_MEMORY | {"wal_disk_bytes_per_buffered_span", "wal_disk_to_wire_bytes"}
_METRICS["cluster"] = {f"{metric}_{agents}" for metric in ("collector_cpu_us_per_span", "redis_cpu_us_per_span")
                       for agents in ("1_agent", "1_agent_spread", "3_agents")} | {
                           "cpu_agents_to_1_agent", "cpu_1_agent_spread_to_1_agent"}


def test_bench_smoke_produces_a_well_formed_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(["bench", "--smoke", "--workdir", str(tmp_path / "work"),
                 "--json", str(json_path), "--markdown", str(markdown_path)])
    result = json.loads(json_path.read_text())
    missed = [label for label, target in result["targets"].items() if target["met"] is False]
    assert code == (1 if missed else 0), "bench exits 1 exactly when a target is missed"
    said = capsys.readouterr().err
    assert all(label in said for label in missed), said
    options = result["options"]
    assert options["rounds"] == 1 and result["spans_per_round"] >= 16384
    assert options["modes"] == list(MODES) and options["layout"] == "interleaved"
    assert options["malloc"] == MALLOC_PINS and set(MALLOC_PINS) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert 100 < result["wire_bytes_per_span"] < 1000
    null = result["null_server"]
    assert null["median"] > 0 and null["cpu_median"] > 0
    assert len(null["spans_per_second"]) == 4, "a round for each mode that measures ingest"
    memory = result["modes"]["memory"]["median"]
    for mode, metrics in _METRICS.items():
        data = result["modes"][mode]
        assert data["available"], data.get("reason")
        assert set(data["median"]) == metrics and all(len(v) == 1 for v in data["rounds"].values())
        assert all(value > 0 for value in data["median"].values()), (mode, data["median"])
        if _LATENCY <= metrics:
            after_root = result["options"]["after_root_s"]
            assert after_root <= data["median"]["decision_latency_p50_s"] <= data["median"]["decision_latency_p99_s"]
            assert data["median"]["decision_latency_samples"] > 10
        if "collector_cpu_to_memory" in metrics:
            assert data["median"]["collector_cpu_to_memory"] == (
                data["median"]["collector_cpu_us_per_span"] / memory["collector_cpu_us_per_span"])
    wal = result["modes"]["wal"]["median"]
    assert 0.3 < wal["wal_disk_to_wire_bytes"] < 3, "the log holds about the wire bytes of what is buffered"
    cluster = result["modes"]["cluster"]["median"]
    assert cluster["cpu_agents_to_1_agent"] == (
        cluster["collector_cpu_us_per_span_3_agents"] / cluster["collector_cpu_us_per_span_1_agent"])
    assert cluster["cpu_1_agent_spread_to_1_agent"] == (
        cluster["collector_cpu_us_per_span_1_agent_spread"] / cluster["collector_cpu_us_per_span_1_agent"])
    overload = result["modes"]["overload"]
    assert overload["available"], overload.get("reason")
    figures = overload["median"]
    assert figures["sent_traces_per_second"] > figures["sustainable_traces_per_second"], "beyond what the buffer holds"
    assert figures["relief_active_share"] > 0 and figures["decided_at_once_share"] > 0
    assert figures["without_relief_relief_active_share"] == 0 and figures["without_relief_decided_early_share"] > 0
    assert figures["rss_peak_bytes"] >= figures["rss_idle_bytes"] > 0
    targets = result["targets"]
    assert len(targets) == 13 and all(t["measured"] is not None and t["met"] in (True, False)
                                     for t in targets.values())
    assert targets["collector CPU per span, 3 agents (summed) <= 1.15x 1 agent (end to end, Redis Cluster)"][
        "measured"] == cluster["cpu_agents_to_1_agent"]
    table = markdown_path.read_text()
    assert table.startswith("# Benchmarks\n")
    assert ("| metric | null server | tailsampler memory | tailsampler memory, contiguous spans | "
            "tailsampler memory + attribute policies | tailsampler memory + WAL | tailsampler redis | target |") in table
    assert "MALLOC_MMAP_THRESHOLD_=" in table and "MALLOC_TRIM_THRESHOLD_=" in table
    assert "| per span | 1 agent | 1 agent, 3 agents' requests | 3 agents | 3 ÷ 1 |" in table
    assert "| at 3× the sustainable load | relief on | relief off |" in table
    assert table.count("\n| ") >= 38  # every row of the four tables


def test_bench_modes_default_to_every_mode() -> None:
    assert build_parser().parse_args(["bench"]).modes == ",".join(MODES)
    assert BenchOptions().modes == MODES


def test_every_process_the_bench_starts_has_the_heap_thresholds_pinned(tmp_path: Path) -> None:
    async def environment() -> bytes:
        null = await NullServerProcess(tmp_path).start()
        try:
            return Path(f"/proc/{null.pid}/environ").read_bytes()
        finally:
            await null.stop()

    variables = asyncio.run(environment()).split(b"\0")
    assert all(f"{name}={value}".encode() in variables for name, value in MALLOC_PINS.items())


def test_cpu_seconds_reads_a_child_to_below_one_clock_tick() -> None:
    """A child burning CPU for 3 ms and then waiting: its CPU reads between 3 ms and well under the
    10 ms that one tick of ``/proc/<pid>/stat`` would round it to, and it stops growing."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nstart = time.process_time()\nwhile time.process_time() - start < 0.003: pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        before = cpu_seconds(child.pid)
        assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
        after = cpu_seconds(child.pid)
        assert 0.003 <= after - before < 0.5
        assert round(after * 1e9) % 10_000_000 != 0, "not a whole number of 10 ms ticks"
        assert cpu_seconds(child.pid) - after < 0.002, "a waiting child adds (almost) nothing"
    finally:
        child.communicate(b"")
    with pytest.raises(ProcessLookupError, match=f"no CPU-time clock for process {child.pid}"):
        cpu_seconds(child.pid)


def test_the_admin_client_polls_over_one_kept_alive_connection() -> None:
    async def peers() -> set[object]:
        seen: set[object] = set()

        async def stats(request: web.Request) -> web.Response:
            seen.add(request.transport.get_extra_info("peername"))
            return web.json_response({"traces": {"kept": 0, "dropped": 0}, "buffer": {"traces": 0}})

        app = web.Application()
        app.add_routes([web.get("/api/v1/stats", stats)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        admin = AdminClient(f"127.0.0.1:{port}")
        try:
            for _ in range(20):
                assert await admin.buffered_traces() == 0
        finally:
            await admin.close()
            await runner.cleanup()
        return seen

    assert len(asyncio.run(peers())) == 1


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


@pytest.mark.parametrize("stage", ["parse", "wire-c", "wire-python", "decide", "pipeline", "pipeline-interleaved", "wal"])
def test_hotpath_runs_one_stage_and_reports_its_cpu_per_span(stage: str, capsys) -> None:
    assert main(["hotpath", stage, "--spans", "600", "--repeat", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stage"] == stage and result["repeat"] == 1
    assert 600 <= result["spans"] < 700  # whole traces: a few more than asked for
    assert result["cpu_us_per_span"] > 0


def test_hotpath_without_repeats_does_only_the_setup(capsys) -> None:
    assert main(["hotpath", "wire-python", "--spans", "100", "--repeat", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_us_per_span"] is None


def test_redis_cost_counts_redis_instructions_for_every_trace_appended_and_decided(capsys) -> None:
    """A real Redis under callgrind: both phases are counted, over fresh traces that were all
    claimed and settled (the command refuses a count that skipped some)."""
    assert main(["redis-cost", "--spans", "3000"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 2000 <= result["spans"] < 3600 and result["traces"] > 100  # the first request only warms up
    # a script call costs Redis thousands of instructions: a count near zero means callgrind
    # counted something else than the buffer's commands
    assert result["append"] > 500 and result["decide"] > 500
    assert result["total"] == pytest.approx(result["append"] + result["decide"])
