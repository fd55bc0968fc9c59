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
import json
import logging
import os
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
    spans           BLOB NOT NULL,
    votes           TEXT
);
CREATE INDEX IF NOT EXISTS traces_start ON traces (start_unix_nano);
CREATE INDEX IF NOT EXISTS traces_stored_at ON traces (stored_at);
"""

_UPSERT = """
INSERT INTO traces (trace_id, start_unix_nano, end_unix_nano, span_count, error, policy,
                    root_service, root_name, stored_at, updated_at, size_bytes, spans, votes)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
    spans = CAST(spans || excluded.spans AS BLOB),
    votes = coalesce(votes, excluded.votes)
"""

_COLUMNS = (
    "trace_id, start_unix_nano, end_unix_nano - start_unix_nano AS duration_ns, span_count, error,"
    " policy, root_service, root_name, stored_at, updated_at, size_bytes"
)


class TraceStoreError(Exception):
    """The trace store cannot be read: missing file, not a tailsampler database, bad trace ID."""


class _Store:
    """The writer's connection and the file it has open. A store whose file was removed or
    replaced under the running collector (its directory deleted, a volume swapped) would take
    every later write into a file nobody can read; ``ensure`` notices that before each write and
    opens the store at its path again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None

    def open(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new database
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            if "votes" not in {row[1] for row in conn.execute("PRAGMA table_info(traces)")}:
                conn.execute("ALTER TABLE traces ADD COLUMN votes TEXT")  # a store written before votes were kept
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self.conn, self._file = conn, (stat.st_dev, stat.st_ino)
        return conn

    def ensure(self) -> tuple[sqlite3.Connection, bool]:
        """The connection to write with, and whether the store had to be opened again."""
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._file
        except FileNotFoundError:
            same = False
        if same and self.conn is not None:
            return self.conn, False
        self.close()
        return self.open(), True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def open_writer(path: str) -> sqlite3.Connection:
    return _Store(path).open()


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
                json.dumps(trace.votes) if trace.votes else None,
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
        self._store = _Store(spec.path)
        self._retention: asyncio.Task[None] | None = None
        self._retention_trouble = Incident(log, f"exporter {name}: retention failed")

    async def open(self) -> None:
        try:
            await self._thread.run(self._store.open)
        except (OSError, sqlite3.Error) as exc:
            raise ExporterSetupError(f"exporter {self._name}: path {self._spec.path!r}: {exc}") from None
        self._retention = asyncio.create_task(self._retain(), name=f"exporter-{self._name}-retention")

    async def _retain(self) -> None:
        while True:
            try:
                deleted = await self._thread.run(self._apply_retention)
            except (OSError, sqlite3.Error) as exc:
                self._retention_trouble.failed(exc)
            else:
                self._retention_trouble.resolved()
                if deleted:
                    log.info("exporter %s: retention deleted %d trace(s)", self._name, deleted)
            await asyncio.sleep(self._spec.retention.interval)

    def _apply_retention(self) -> int:
        conn, _ = self._ensure()
        return apply_retention(conn, self._spec.retention, time.time())

    def _write(self, batch: list[KeptTrace]) -> None:
        conn, _ = self._ensure()
        write_batch(conn, batch, time.time())

    def _ensure(self) -> tuple[sqlite3.Connection, bool]:
        conn, reopened = self._store.ensure()
        if reopened:
            log.error(
                "exporter %s: the trace store %s was removed or replaced while running; opened it again "
                "(traces kept before are not in the new file)", self._name, self._spec.path,
            )
        return conn, reopened

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        try:
            await self._thread.run(self._write, batch)
        except (OSError, sqlite3.Error) as exc:
            raise SendFailed(f"{self._spec.path}: {exc}", retryable=True, reason="sqlite") from None
        return Delivered()

    async def close(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        await self._thread.run(self._store.close)
        self._thread.shutdown()


def _open_reader(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise TraceStoreError(f"no trace store at {path!r} (is the sqlite exporter configured with this path?)")
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _query(path: str, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """``sql`` with ``{columns}`` standing for the listed columns: a store written before votes
    were kept (and not opened for writing since) is read without them."""
    conn = _open_reader(path)
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(traces)")}
        columns = f"{_COLUMNS}, votes" if "votes" in present else _COLUMNS
        rows = conn.execute(sql.format(columns=columns), params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise TraceStoreError(f"{path!r} is not a readable tailsampler trace store: {exc}") from None
    finally:
        conn.close()
    return [_row(row) for row in rows]


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = {**dict(row), "error": bool(row["error"])}
    out["votes"] = json.loads(out["votes"]) if out.get("votes") else {}
    return out


def list_traces(
    path: str,
    limit: int = 50,
    errors_only: bool = False,
    service: str | None = None,
    policy: str | None = None,
    since: float | None = None,
    until: float | None = None,
    min_duration_ms: float | None = None,
    max_duration_ms: float | None = None,
) -> list[dict[str, Any]]:
    """Newest first. ``service`` is the root span's service; ``since`` and ``until`` are Unix
    seconds of the trace's start; durations run from the earliest span start to the latest end."""
    where: list[str] = []
    params: list[Any] = []
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
    if until is not None:
        where.append("start_unix_nano < ?")
        params.append(int(until * 1e9))
    if min_duration_ms is not None:
        where.append("end_unix_nano - start_unix_nano >= ?")
        params.append(int(min_duration_ms * 1e6))
    if max_duration_ms is not None:
        where.append("end_unix_nano - start_unix_nano <= ?")
        params.append(int(max_duration_ms * 1e6))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {{columns}} FROM traces {clause} ORDER BY start_unix_nano DESC LIMIT ?"
    return _query(path, sql, (*params, max(0, limit)))


def get_trace(path: str, trace_id_hex: str) -> dict[str, Any] | None:
    """The trace's row with ``spans``, its ``TracesData`` body; None when it is not stored."""
    trace_id = trace_id_hex.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        raise TraceStoreError(f"trace ID must be 32 hex digits, got {trace_id_hex!r}")
    rows = _query(path, "SELECT {columns}, spans FROM traces WHERE trace_id = ?", (trace_id,))
    return rows[0] if rows else None


def recent_traces(path: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` traces stored last, newest first, with their ``spans`` (for replaying them
    through other policies)."""
    sql = "SELECT {columns}, spans FROM traces ORDER BY stored_at DESC, rowid DESC LIMIT ?"
    return _query(path, sql, (max(0, limit),))
