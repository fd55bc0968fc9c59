"""The embedded trace store: one SQLite row per kept trace, queryable by ``tailsampler traces`` and
the admin API.

A row holds the trace's spans as a ``TracesData`` body plus the facts it is listed and filtered
by. Spans that arrive after their trace was kept are appended to the row (protobuf bodies
concatenate) and its facts are widened. Writes and retention run on one dedicated thread with one
connection, in WAL mode, so readers never wait for the writer and the event loop never waits for
the disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tailsampler.common.incident import Incident

from .base import ExporterSetupError, KeptTrace
from .delivery import Delivered, SendFailed
from .specs import RetentionConfig, SqliteSpec
from .summary import summarize
from .worker_thread import WorkerThread

log = logging.getLogger("tailsampler.storage")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    trace_id        TEXT PRIMARY KEY,
    start_unix_nano INTEGER NOT NULL,
    end_unix_nano   INTEGER NOT NULL,
    span_count      INTEGER NOT NULL,
    error           INTEGER NOT NULL,
    policy          TEXT,
    root_service    TEXT,
    root_name       TEXT,
    stored_at       REAL NOT NULL,
    updated_at      REAL NOT NULL,
    size_bytes      INTEGER NOT NULL,
    spans           BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_start ON traces (start_unix_nano);
CREATE INDEX IF NOT EXISTS traces_stored_at ON traces (stored_at);
"""

_UPSERT = """
INSERT INTO traces (trace_id, start_unix_nano, end_unix_nano, span_count, error, policy,
                    root_service, root_name, stored_at, updated_at, size_bytes, spans)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trace_id) DO UPDATE SET
    start_unix_nano = min(start_unix_nano, excluded.start_unix_nano),
    end_unix_nano = max(end_unix_nano, excluded.end_unix_nano),
    span_count = span_count + excluded.span_count,
    error = max(error, excluded.error),
    policy = coalesce(policy, excluded.policy),
    root_service = coalesce(root_service, excluded.root_service),
    root_name = coalesce(root_name, excluded.root_name),
    updated_at = excluded.updated_at,
    size_bytes = size_bytes + excluded.size_bytes,
    spans = CAST(spans || excluded.spans AS BLOB)
"""

_COLUMNS = (
    "trace_id, start_unix_nano, end_unix_nano - start_unix_nano AS duration_ns, span_count, error,"
    " policy, root_service, root_name, stored_at, updated_at, size_bytes"
)


class TraceStoreError(Exception):
    """The trace store cannot be read: missing file, not a tailsampler database, bad trace ID."""


def open_writer(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new database
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    return conn


def write_batch(conn: sqlite3.Connection, batch: list[KeptTrace], now: float) -> None:
    rows = []
    for trace in batch:
        s = summarize(trace.data)
        rows.append(
            (
                trace.trace_id.hex(),
                s.start_unix_nano,
                s.end_unix_nano,
                s.span_count,
                int(s.error),
                trace.verdict.policy,
                s.root_service,
                s.root_name,
                now,
                now,
                len(trace.data),
                trace.data,
            )
        )
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_UPSERT, rows)


def apply_retention(conn: sqlite3.Connection, retention: RetentionConfig, now: float) -> int:
    """Delete traces stored before ``now - max_age``, then the oldest until the stored spans fit
    ``max_megabytes``; returns how many traces were deleted."""
    deleted = 0
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if retention.max_age:
            deleted += conn.execute("DELETE FROM traces WHERE stored_at < ?", (now - retention.max_age,)).rowcount
        if retention.max_megabytes:
            deleted += conn.execute(
                """DELETE FROM traces WHERE rowid IN (
                       SELECT rowid FROM (
                           SELECT rowid, sum(size_bytes) OVER (ORDER BY stored_at DESC, rowid DESC) AS kept
                           FROM traces)
                       WHERE kept > ?)""",
                (int(retention.max_megabytes * 1024 * 1024),),
            ).rowcount
    if deleted:
        conn.execute("PRAGMA incremental_vacuum")
    return deleted


class SqliteSink:
    def __init__(self, name: str, spec: SqliteSpec) -> None:
        self._name = name
        self._spec = spec
        self._thread = WorkerThread(f"exporter-{name}")
        self._conn: sqlite3.Connection | None = None
        self._retention: asyncio.Task[None] | None = None
        self._retention_trouble = Incident(log, f"exporter {name}: retention failed")

    async def open(self) -> None:
        try:
            self._conn = await self._thread.run(open_writer, self._spec.path)
        except (OSError, sqlite3.Error) as exc:
            raise ExporterSetupError(f"exporter {self._name}: path {self._spec.path!r}: {exc}") from None
        self._retention = asyncio.create_task(self._retain(), name=f"exporter-{self._name}-retention")

    async def _retain(self) -> None:
        while True:
            try:
                deleted = await self._thread.run(apply_retention, self._conn, self._spec.retention, time.time())
            except sqlite3.Error as exc:
                self._retention_trouble.failed(exc)
            else:
                self._retention_trouble.resolved()
                if deleted:
                    log.info("exporter %s: retention deleted %d trace(s)", self._name, deleted)
            await asyncio.sleep(self._spec.retention.interval)

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        try:
            await self._thread.run(write_batch, self._conn, batch, time.time())
        except sqlite3.Error as exc:
            raise SendFailed(f"{self._spec.path}: {exc}", retryable=True, reason="sqlite") from None
        return Delivered()

    async def close(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._conn is not None:
            await self._thread.run(self._conn.close)
            self._conn = None
        self._thread.shutdown()


def _open_reader(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise TraceStoreError(f"no trace store at {path!r} (is the sqlite exporter configured with this path?)")
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _query(path: str, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    conn = _open_reader(path)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise TraceStoreError(f"{path!r} is not a readable tailsampler trace store: {exc}") from None
    finally:
        conn.close()
    return [{**dict(row), "error": bool(row["error"])} for row in rows]


def list_traces(
    path: str,
    limit: int = 50,
    errors_only: bool = False,
    service: str | None = None,
    policy: str | None = None,
    since: float | None = None,
) -> list[dict[str, Any]]:
    """Newest first. ``service`` is the root span's service; ``since`` is Unix seconds of the
    trace's start."""
    where, params = [], []
    if errors_only:
        where.append("error = 1")
    if service is not None:
        where.append("root_service = ?")
        params.append(service)
    if policy is not None:
        where.append("policy = ?")
        params.append(policy)
    if since is not None:
        where.append("start_unix_nano >= ?")
        params.append(int(since * 1e9))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {_COLUMNS} FROM traces {clause} ORDER BY start_unix_nano DESC LIMIT ?"
    return _query(path, sql, (*params, max(0, limit)))


def get_trace(path: str, trace_id_hex: str) -> dict[str, Any] | None:
    """The trace's row with ``spans``, its ``TracesData`` body; None when it is not stored."""
    trace_id = trace_id_hex.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        raise TraceStoreError(f"trace ID must be 32 hex digits, got {trace_id_hex!r}")
    rows = _query(path, f"SELECT {_COLUMNS}, spans FROM traces WHERE trace_id = ?", (trace_id,))
    return rows[0] if rows else None
