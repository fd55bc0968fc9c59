"""The embedded SQLite store: row contents, late spans, retention and the query functions."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.storage import TraceStoreError, get_trace, list_traces
from tailsampler.storage.specs import RetentionConfig
from tailsampler.storage.sqlite_store import apply_retention, open_writer, write_batch
from tests.otlp_sink import wait_for
from tests.storage_support import START, fast_retry, kept, running, spec


def _span_ids(data: bytes) -> list[bytes]:
    parsed = TracesData.FromString(data)
    return [span.span_id for rs in parsed.resource_spans for ss in rs.scope_spans for span in ss.spans]


async def test_row_holds_the_trace_and_its_facts(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    trace = kept(4, error=True, service="cart", policy="errors", name="POST /checkout")
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        await exporter.submit(trace)
    row = get_trace(db, trace.trace_id.hex().upper())
    assert row is not None
    assert row["trace_id"] == trace.trace_id.hex()
    assert row["spans"] == trace.data
    assert (row["span_count"], row["error"], row["policy"]) == (4, True, "errors")
    assert (row["root_service"], row["root_name"]) == ("cart", "POST /checkout")
    assert (row["start_unix_nano"], row["duration_ns"]) == (START, 100_000_000)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_late_spans_are_appended_to_the_kept_row(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    first = kept(2, root=False, policy="slow")
    late = kept(3, trace_id=first.trace_id, error=True, late=True, policy="slow", start=START - 50_000_000)
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        await exporter.submit(first)
        await wait_for(lambda: _stored(db, first), message="first part stored")
        assert get_trace(db, first.trace_id.hex())["root_name"] is None
        await exporter.submit(late)
    row = get_trace(db, first.trace_id.hex())
    assert row["spans"] == first.data + late.data
    assert _span_ids(row["spans"]) == _span_ids(first.data) + _span_ids(late.data)
    assert row["span_count"] == 5
    assert row["error"] is True
    assert row["root_name"] == "GET /cart"
    assert row["start_unix_nano"] == START - 50_000_000
    assert row["duration_ns"] == 150_000_000
    assert len(list_traces(db)) == 1


def _stored(db: str, trace) -> bool:
    try:
        return get_trace(db, trace.trace_id.hex()) is not None
    except TraceStoreError:
        return False


async def test_list_filters_and_orders_newest_first(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    old = kept(1, service="cart", policy="baseline", start=START)
    failing = kept(2, service="cart", error=True, policy="errors", start=START + 10**9)
    other = kept(1, service="search", policy="baseline", start=START + 2 * 10**9)
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        for trace in (old, failing, other):
            await exporter.submit(trace)
    ids = lambda rows: [r["trace_id"] for r in rows]  # noqa: E731
    assert ids(list_traces(db)) == [t.trace_id.hex() for t in (other, failing, old)]
    assert ids(list_traces(db, limit=1)) == [other.trace_id.hex()]
    assert ids(list_traces(db, errors_only=True)) == [failing.trace_id.hex()]
    assert ids(list_traces(db, service="cart")) == [failing.trace_id.hex(), old.trace_id.hex()]
    assert ids(list_traces(db, policy="baseline")) == [other.trace_id.hex(), old.trace_id.hex()]
    assert ids(list_traces(db, since=(START + 10**9) / 1e9)) == [other.trace_id.hex(), failing.trace_id.hex()]
    assert "spans" not in list_traces(db)[0]


def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    conn = open_writer(str(tmp_path / "t.db"))
    now = time.time()
    old, middle, new = kept(1), kept(1), kept(1)
    write_batch(conn, [old], now - 3600)
    write_batch(conn, [middle], now - 60)
    write_batch(conn, [new], now)
    assert apply_retention(conn, RetentionConfig(max_age=600.0, max_megabytes=0), now) == 1
    remaining = {r[0] for r in conn.execute("SELECT trace_id FROM traces")}
    assert remaining == {middle.trace_id.hex(), new.trace_id.hex()}
    one_trace_mb = len(new.data) * 1.5 / (1024 * 1024)
    assert apply_retention(conn, RetentionConfig(max_age=0.0, max_megabytes=one_trace_mb), now) == 1
    assert [r[0] for r in conn.execute("SELECT trace_id FROM traces")] == [new.trace_id.hex()]
    conn.close()


async def test_retention_runs_periodically_in_the_exporter(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    exporter_spec = spec(type="sqlite", path=db, retention={"max_age": "200ms", "interval": "50ms"})
    async with running(exporter_spec) as [exporter]:
        trace = kept(1)
        await exporter.submit(trace)
        await wait_for(lambda: _stored(db, trace), message="trace stored")
        await wait_for(lambda: not _stored(db, trace), message="trace aged out")


def test_queries_explain_a_missing_store_or_bad_id(tmp_path: Path) -> None:
    with pytest.raises(TraceStoreError, match="no trace store"):
        list_traces(str(tmp_path / "missing.db"))
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(TraceStoreError, match="not a readable"):
        list_traces(str(tmp_path / "junk.db"))
    conn = open_writer(str(tmp_path / "t.db"))
    conn.close()
    with pytest.raises(TraceStoreError, match="32 hex digits"):
        get_trace(str(tmp_path / "t.db"), "xyz")
    assert get_trace(str(tmp_path / "t.db"), "ab" * 16) is None


async def test_unusable_path_fails_at_start(tmp_path: Path) -> None:
    from tailsampler.storage import ExporterSetupError

    (tmp_path / "file").write_text("x")
    with pytest.raises(ExporterSetupError, match="exporter sqlite: path"):
        async with running(spec(type="sqlite", path=str(tmp_path / "file" / "t.db"))):
            pass


async def test_a_store_removed_while_running_is_opened_again(tmp_path: Path) -> None:
    db = str(tmp_path / "store" / "t.db")
    before, after = kept(2), kept(3)
    async with running(spec(type="sqlite", path=db)) as [exporter]:
        await exporter.submit(before)
        await wait_for(lambda: _stored(db, before), message="stored before the removal")
        shutil.rmtree(tmp_path / "store")
        await exporter.submit(after)
        await wait_for(lambda: _stored(db, after), message="stored in the store opened again")
        assert exporter.health()[0]
    assert [row["trace_id"] for row in list_traces(db)] == [after.trace_id.hex()]


async def test_a_store_that_cannot_be_opened_again_keeps_its_traces_queued(tmp_path: Path) -> None:
    db = str(tmp_path / "store" / "t.db")
    trace = kept(2)
    delivery = {"retry_on_failure": fast_retry(), "circuit_breaker": {"failure_threshold": 1, "cooldown": "50ms"}}
    async with running(spec(type="sqlite", path=db, **delivery)) as [exporter]:
        await exporter.submit(kept(1))
        shutil.rmtree(tmp_path / "store")
        (tmp_path / "store").write_text("a file where the store's directory was")
        await exporter.submit(trace)
        await wait_for(lambda: not exporter.health()[0], message="the exporter reports the store unusable")
        assert not _stored(db, trace)
        (tmp_path / "store").unlink()
        await wait_for(lambda: _stored(db, trace), timeout=10, message="delivered once the store could be opened")
        await wait_for(lambda: exporter.health()[0], message="healthy again")
