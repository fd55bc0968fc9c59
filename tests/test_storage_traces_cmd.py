"""``tailsampler traces list|show`` against a real store written by the sqlite exporter."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.collector import traces_cmd
from tests.storage_support import START, kept, running, spec


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tailsampler traces")
    traces_cmd.configure(parser)
    return traces_cmd.run(parser.parse_args(argv))


@pytest.fixture
async def store(tmp_path: Path):
    db = str(tmp_path / "kept.db")
    failing = kept(3, service="cart", error=True, policy="errors", name="POST /checkout", start=START + 10**9)
    fine = kept(1, service="search", policy="baseline", name="GET /search")
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        await exporter.submit(fine)
        await exporter.submit(failing)
    return db, failing, fine


async def test_list_prints_a_table_newest_first(store, capsys) -> None:
    db, failing, fine = store
    assert run("list", "--db", db) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["TRACE", "ID", "START"]
    assert first.split() == [failing.trace_id.hex(), "2023-11-14", "22:13:21.000", "100.0", "ms", "3", "ERROR"] + [
        "errors",
        "cart:",
        "POST",
        "/checkout",
    ]
    assert second.startswith(fine.trace_id.hex()) and "search: GET /search" in second and "ERROR" not in second


async def test_list_filters(store, capsys) -> None:
    db, failing, fine = store
    assert run("list", "--db", db, "--errors") == 0
    assert fine.trace_id.hex() not in capsys.readouterr().out
    assert run("list", "--db", db, "--service", "search", "--limit", "5") == 0
    out = capsys.readouterr().out
    assert fine.trace_id.hex() in out and failing.trace_id.hex() not in out
    assert run("list", "--db", db, "--service", "nobody") == 0
    assert capsys.readouterr().out == "no kept traces match\n"


async def test_show_prints_the_span_tree(store, capsys) -> None:
    db, failing, _ = store
    assert run("show", "--db", db, failing.trace_id.hex()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"trace {failing.trace_id.hex()}") and "3 spans" in lines[0] and "errors" in lines[0]
    assert lines[1:] == [
        "cart: POST /checkout  100.0 ms",
        "  cart: child 1  5.0 ms",
        "  cart: child 2  5.0 ms  ERROR",
    ]


async def test_show_marks_spans_whose_parent_never_arrived(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "kept.db")
    trace = kept(2, root=False)
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        await exporter.submit(trace)
    assert run("show", "--db", db, trace.trace_id.hex()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["checkout: GET /cart  100.0 ms  (parent not received)", "  checkout: child 1  5.0 ms"]
    assert run("list", "--db", db) == 0
    assert "(root not received)" in capsys.readouterr().out


async def test_db_path_from_config(store, tmp_path: Path, capsys) -> None:
    db, failing, _ = store
    config = tmp_path / "c.yaml"
    policies = "tail_sampling: {policies: [{name: all, type: always_sample}]}\n"
    config.write_text(
        f"{policies}exporters:\n  - {{type: file, path: {tmp_path / 'x.jsonl'}}}\n  - {{type: sqlite, path: {db}}}\n"
    )
    assert run("list", "--config", str(config)) == 0
    assert failing.trace_id.hex() in capsys.readouterr().out
    config.write_text(f"{policies}exporters:\n  - {{type: otlp, endpoint: 'localhost:4317'}}\n")
    assert run("list", "--config", str(config)) == 1
    assert "c.yaml: exporters: no sqlite exporter" in capsys.readouterr().err


def test_clear_errors_for_missing_store_and_trace(tmp_path: Path, capsys) -> None:
    assert run("list", "--db", str(tmp_path / "nope.db")) == 1
    assert "no trace store at" in capsys.readouterr().err
    assert run("show", "--db", str(tmp_path / "nope.db"), "ab" * 16) == 1
    assert "no trace store at" in capsys.readouterr().err


async def test_show_unknown_trace(store, capsys) -> None:
    db, _, _ = store
    assert run("show", "--db", db, "ab" * 16) == 1
    assert f"trace {'ab' * 16} is not in" in capsys.readouterr().err


def test_show_prints_sub_millisecond_durations_in_microseconds() -> None:
    data = TracesData()
    spans = data.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET /ping", start_time_unix_nano=1_000, end_time_unix_nano=1_000 + 1_500_000)
    spans.add(trace_id=b"\x01" * 16, span_id=b"\x03" * 8, parent_span_id=b"\x02" * 8, name="cache hit",
              start_time_unix_nano=2_000, end_time_unix_nano=2_000 + 42_300)
    assert traces_cmd.span_tree(data.SerializeToString()) == ["?: GET /ping  1.5 ms", "  ?: cache hit  42.3 µs"]
