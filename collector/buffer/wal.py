"""The memory buffer's write-ahead log: what a restarted agent needs so that nothing accepted is lost.

Each export request is one record, written before the request is acknowledged: its fragments,
each with its trace ID, span count, whether it holds a root span, when it was received, and the
split's facts. Each decision round is one record (dropped traces, kept ones with their decision),
and so is each batch of kept traces that every exporter has finished with. On start the log is
replayed (``open_wal``): pending traces go back into the buffer with the times their deadlines
derive from, kept traces not yet delivered everywhere are delivered again (at-least-once), and
decided traces are not decided again.

Durability, by ``fsync`` setting (what an acknowledged request survives):

- ``always``: an append completes only once an ``fdatasync`` of its segment (and, for a new
  segment, of the directory) covers it; requests that arrive during a flush share the next one.
  A process crash (SIGKILL, OOM kill) and a machine crash or power loss lose nothing
  acknowledged, on a disk that honours flushes.
- ``interval`` (default, ``fsync_interval: 1s``): an append completes once its record is in the
  kernel (``pwrite`` returned); a thread flushes every ``fsync_interval``. A process crash loses
  nothing acknowledged: the kernel writes the pages back. A machine crash loses what was
  acknowledged in the last ``fsync_interval`` (plus one flush's time), and the decisions and
  deliveries logged in it: those traces are decided again (a policy that does not decide the
  same way twice, such as rate limiting, may then keep a trace it dropped), and a kept trace
  may be delivered twice.
- ``never``: as ``interval`` for a process crash; nothing is flushed, so a machine crash loses
  what the kernel had not yet written back (on Linux up to ``vm.dirty_expire_centisecs``, 30 s
  by default, or more), in any segment.

Whatever the setting, a torn or damaged tail is cut off on start, a damaged record between
intact ones is skipped and counted, and a clean shutdown (``close``) flushes everything unless
``never``.

Disk use follows what is live, not uptime: a segment file is removed once every trace in it is
settled (dropped, or kept and delivered), and when settled data makes up most of the log, the
live traces of the oldest segment are copied forward (carried) into the current one so that
the old file can go. The log stays within about twice what is live (pending, and kept but not
yet delivered) plus two segments, and never past ``max_bytes``: an append that does not fit
raises ``WalFull``. Records of decisions and deliveries are always written, since they are what
frees space.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tailsampler.collector.wal_config import WalConfig

from .wal_format import (
    APPEND,
    CARRY,
    DECIDE,
    DELIVER,
    RECORD_HEADER,
    SEGMENT_HEADER,
    DecisionValue,
    Entry,
    LoggedDecision,
    WalError,
    WalFull,
    decode_payload,
    encode_record,
    read_segment_header,
    record_at,
    scan,
    segment_header,
)
from .wal_replay import LiveTrace, Location, Recovered, RecoveredTrace, Settled, TraceLedger
from .wal_sync import DONE, Syncer

__all__ = [
    "DecisionValue",
    "Entry",
    "LoggedDecision",
    "Recovered",
    "RecoveredTrace",
    "Settled",
    "WalConfig",
    "WalError",
    "WalFull",
    "WriteAheadLog",
    "open_wal",
]

log = logging.getLogger(__name__)

_SEGMENT_NAME = re.compile(r"(\d{20})\.wal")
_LOCK = "LOCK"
_ENTRY_OVERHEAD = 48  # bytes a fragment costs on disk beyond its own, about: its columns, its record's share


class Fragment(Protocol):
    """What the log reads of a fragment (``tailsampler.collector.wire.Fragment``)."""

    pieces: Sequence[bytes]
    facts: bytes
    span_count: int
    has_root: bool
    size: int


class WalMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Gauge("tailsampler_wal_bytes", "Bytes of write-ahead log segment files on disk", registry=registry)
        self.segments = Gauge("tailsampler_wal_segments", "Write-ahead log segment files", registry=registry)
        self.fsync = Histogram(
            "tailsampler_wal_fsync_seconds",
            "Time to flush the write-ahead log to stable storage",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.replayed_traces = Counter(
            "tailsampler_wal_replayed_traces",
            "Traces recovered from the write-ahead log on start: pending, or kept and delivered again",
            ["state"], registry=registry,
        )
        self.replayed_spans = Counter(
            "tailsampler_wal_replayed_spans", "Spans of the traces recovered on start", ["state"], registry=registry
        )
        self.corrupt_records = Counter(
            "tailsampler_wal_corrupt_records", "Damaged write-ahead log records skipped on start", registry=registry
        )
        self.torn_bytes = Counter(
            "tailsampler_wal_torn_bytes", "Bytes of torn or damaged segment tails cut off on start", registry=registry
        )
        self.carried_bytes = Counter(
            "tailsampler_wal_carried_bytes",
            "Fragment bytes of live traces copied forward so that an old segment could be removed",
            registry=registry,
        )


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    size: int


_SIZE = attrgetter("size")
_SPANS = attrgetter("span_count")
_ROOT = attrgetter("has_root")
_PIECES = attrgetter("pieces")
_DATA = attrgetter("data")
_RECEIVED = attrgetter("received")
_FACTS = attrgetter("facts")


class WriteAheadLog:
    """The log of one memory buffer, made by ``open_wal``. Every method runs on the event loop
    thread; only flushes run on a thread of their own. Each call writes one record with one
    ``pwrite``."""

    def __init__(
        self,
        directory: str,
        config: WalConfig,
        metrics: WalMetrics,
        lock_fd: int,
        segments: list[_Segment],
        ledger: TraceLedger,
    ) -> None:
        self.directory = directory
        self._max_bytes = int(config.max_bytes)
        self._segment_bytes = config.segment_bytes
        self._metrics = metrics
        self._lock_fd = lock_fd
        self._segments = deque(segments)
        self._bytes = sum(segment.size for segment in segments)
        self._ledger = ledger
        self._position = 0
        self._fd = -1
        self._closed = False
        self._syncer = Syncer(config.fsync, float(config.fsync_interval), directory, metrics.fsync)
        metrics.bytes.set_function(lambda: self.disk_bytes)
        metrics.segments.set_function(lambda: len(self._segments))
        self._open_segment(segments[-1].seq + 1 if segments else 1, opened=True)
        self._release()

    @property
    def failure(self) -> WalError | None:
        """Why the log refuses writes (a flush failed, so what the kernel kept is unknown), if it
        does: for readiness."""
        return self._syncer.failure

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files, those waiting for their removal included."""
        return self._bytes + self._syncer.removal_bytes

    def append(
        self,
        fragments: Mapping[bytes, Fragment],
        received: float,
        *,
        decided: Mapping[bytes, DecisionValue] | None = None,
    ) -> Awaitable[None]:
        """Log one request's fragments, received at ``received`` (wall-clock seconds); await the
        result before acknowledging the request; each fragment's facts record is logged with it.
        ``decided`` holds decisions made as the request came in: a kept trace's
        fragments here (late spans of a kept trace, or a trace overload relief kept) go out now,
        and each is settled by one more ``delivered``; a dropped trace (overload relief) is
        settled, with no fragments logged. Raises ``WalFull`` when the request does not fit,
        ``WalError`` when the log cannot be written; then nothing was."""
        if not fragments and not decided:
            return DONE
        values = fragments.values()
        record = encode_record(
            APPEND,
            received,
            list(fragments),
            map(_SPANS, values),
            map(_ROOT, values),
            list(map(_PIECES, values)),
            list(map(_FACTS, values)),
            None,
            decided,
        )
        location = self._write(record, received, limited=bool(fragments))  # decisions alone only free space
        ledger = self._ledger
        ledger.logged(location, fragments, list(map(_SIZE, values)))
        if decided:
            for trace_id, decision in decided.items():
                if decision.keep:
                    ledger.keep(trace_id, decision, received)
                else:
                    ledger.settle(trace_id, decision, received)
        return self._syncer.wrote(self._position, True)

    def decided(self, decisions: Mapping[bytes, DecisionValue], now: float) -> Awaitable[None]:
        """Log a round's decisions: dropped traces are settled, kept ones await ``delivered``.
        Awaiting the result is optional: a decision lost in a machine crash is made again."""
        return self._settle(DECIDE, decisions, now)

    def delivered(self, decisions: Mapping[bytes, DecisionValue], now: float) -> Awaitable[None]:
        """Log kept traces that every exporter has finished with (delivered, or given up on for a
        counted reason); each call settles one delivery a trace awaits. Awaiting is optional: a
        delivery lost in a machine crash means delivering again."""
        return self._settle(DELIVER, decisions, now)

    def close(self) -> None:
        """Flush (unless ``fsync: never``) and close; what is live stays for the next start."""
        if self._closed:
            return
        self._closed = True
        self._syncer.close()
        os.close(self._lock_fd)

    def _settle(self, kind: int, decisions: Mapping[bytes, DecisionValue], now: float) -> Awaitable[None]:
        if not decisions:
            return DONE
        self._write(encode_record(kind, now, (), (), (), (), None, None, decisions), now, limited=False)
        ledger = self._ledger
        if kind == DELIVER:
            for trace_id, decision in decisions.items():
                ledger.delivered(trace_id, decision, now)
        else:
            for trace_id, decision in decisions.items():
                if decision.keep:
                    ledger.keep(trace_id, decision, now)
                else:
                    ledger.settle(trace_id, decision, now)
        self._release()
        return self._syncer.wrote(self._position, True)

    def _write(self, record: bytearray, now: float, limited: bool) -> Location:
        if self._closed:
            raise WalError(f"write-ahead log {self.directory} is closed")
        if self.failure is not None:
            raise self.failure
        current = self._segments[-1]
        if current.size + len(record) > self._segment_bytes and current.size > SEGMENT_HEADER:
            self._open_segment(current.seq + 1, opened=False)
            if self.disk_bytes > 2 * (self._ledger.live_bytes + self._segment_bytes):
                self._carry(now)
        if limited and self.disk_bytes + len(record) > self._max_bytes:
            self._carry(now)
            if self.disk_bytes + len(record) > self._max_bytes:
                raise WalFull(
                    f"write-ahead log {self.directory} full: {self.disk_bytes} of max_bytes {self._max_bytes} "
                    f"in use, {len(record)} more needed"
                )
        return self._put(record)

    def _put(self, record: bytearray) -> Location:
        """Write a record at the end of the current segment, or nothing at all."""
        segment = self._segments[-1]
        offset = segment.size
        try:
            done = os.pwrite(self._fd, record, offset)
            while done < len(record):  # a short write: the rest, as one more call
                done += os.pwrite(self._fd, memoryview(record)[done:], offset + done)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, offset)
            except OSError:
                pass
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WalFull(f"write-ahead log {segment.path}: no space left on the device") from None
            raise WalError(f"write-ahead log {segment.path}: cannot write: {exc.strerror}") from None
        segment.size += len(record)
        self._bytes += len(record)
        self._position += len(record)
        return (segment.seq, offset, len(record))

    def _open_segment(self, seq: int, opened: bool) -> None:
        path = os.path.join(self.directory, f"{seq:020d}.wal")
        header = segment_header(seq, opened)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WalFull(f"write-ahead log {path}: no space left on the device") from None
            raise WalError(f"write-ahead log {path}: cannot create a segment: {exc.strerror}") from None
        try:
            os.pwrite(fd, header, 0)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise WalError(f"write-ahead log {path}: cannot write a segment header: {exc.strerror}") from None
        self._segments.append(_Segment(seq, path, len(header)))
        self._bytes += len(header)
        self._position += len(header)
        self._fd = fd
        self._syncer.use(fd)

    def _release(self) -> None:
        """Remove the oldest segments while no live trace has an entry in them."""
        segments, pins = self._segments, self._ledger.pins
        while len(segments) > 1 and not pins.get(segments[0].seq):
            segment = segments.popleft()
            pins.pop(segment.seq, None)
            self._bytes -= segment.size
            self._syncer.remove_after(self._position, segment.path, segment.size)

    def _carry(self, now: float) -> None:
        """Copy the live traces whose oldest entries are in the oldest segment into the current
        one, when that frees at least twice the bytes it writes, and remove what that settles.
        Waiting for that much keeps a refused request's retries from rewriting traces in vain,
        and still bounds the log: what the oldest segment pins is live, and the settled segments
        behind it accumulate until they are worth the copy."""
        segments = self._segments
        if len(segments) < 2:
            return
        live = self._ledger.live
        traces = [(trace_id, live[trace_id]) for trace_id in self._ledger.pins.get(segments[0].seq, ())]
        freed = segments[0].size
        for segment in list(segments)[1:-1]:
            if self._ledger.pins.get(segment.seq):
                break
            freed += segment.size
        if 2 * sum(trace.nbytes + _ENTRY_OVERHEAD * len(trace.records) for _, trace in traces) > freed:
            return  # not worth it yet: wait until more of the segments after it are settled
        try:
            entries = self._read_entries(traces)
        except OSError as exc:
            log.error("write-ahead log %s: cannot read back live traces to carry them forward: %s", self.directory, exc)
            return
        batch: list[tuple[bytes, LiveTrace]] = []
        size = 0
        for trace_id, trace in traces:
            batch.append((trace_id, trace))
            size += trace.nbytes
            if size >= self._segment_bytes:
                self._put_carried(batch, entries, now)
                batch, size = [], 0
        if batch:
            self._put_carried(batch, entries, now)
        self._syncer.wrote(self._position, False)
        self._release()

    def _read_entries(self, traces: list[tuple[bytes, LiveTrace]]) -> dict[bytes, list[Entry]]:
        """The current entries of ``traces``, read back from their records in log order."""
        wanted = {trace_id: set(trace.records) for trace_id, trace in traces}
        entries: dict[bytes, list[Entry]] = {trace_id: [] for trace_id in wanted}
        paths = {segment.seq: segment.path for segment in self._segments}
        files: dict[int, int] = {}
        try:
            for location in sorted(set().union(*wanted.values())):
                seq, offset, length = location
                if seq not in files:
                    files[seq] = os.open(paths[seq], os.O_RDONLY | os.O_CLOEXEC)
                raw = os.pread(files[seq], length, offset)
                found = record_at(raw, 0)
                try:
                    if found is None:
                        raise ValueError("checksum mismatch")
                    record = decode_payload(found[0], memoryview(raw)[RECORD_HEADER:])
                except ValueError as exc:
                    log.error("write-ahead log %s: record at %d damaged on disk (%s); its entries are lost", paths[seq], offset, exc)
                    self._metrics.corrupt_records.inc()
                    continue
                for entry in record.entries:
                    if location in wanted.get(entry.trace_id, ()):
                        entries[entry.trace_id].append(entry)
        finally:
            for fd in files.values():
                os.close(fd)
        return entries

    def _put_carried(self, batch: list[tuple[bytes, LiveTrace]], entries: dict[bytes, list[Entry]], now: float) -> None:
        flat = [entry for trace_id, _ in batch for entry in entries[trace_id]]
        kept = [(trace_id, trace) for trace_id, trace in batch if trace.decision is not None]
        record = encode_record(
            CARRY,
            now,
            [entry.trace_id for entry in flat],
            map(_SPANS, flat),
            map(_ROOT, flat),
            [(entry.data,) for entry in flat],
            list(map(_FACTS, flat)),
            list(map(_RECEIVED, flat)),
            {trace_id: trace.decision for trace_id, trace in kept},
            [trace.deliveries for _, trace in kept],
        )
        location = self._put(record)
        ledger = self._ledger
        for trace_id, trace in batch:
            ledger.move(trace_id, trace, location[0])
        for entry in flat:
            ledger.add(entry.trace_id, location, len(entry.data))
        self._metrics.carried_bytes.inc(sum(map(len, map(_DATA, flat))))


def open_wal(config: WalConfig, registry: CollectorRegistry) -> tuple[WriteAheadLog, Recovered]:
    """Open (or create) the log in ``config.dir``, replay it, and start a new segment. Blocking
    file work: from a running event loop, call it through ``asyncio.to_thread``."""
    directory = os.path.abspath(config.dir)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise WalError(f"write-ahead log directory {directory}: cannot create it: {exc.strerror}") from None
    lock_fd = _lock(directory)
    try:
        segments, ledger, corrupt, torn = _replay(directory, sync=config.fsync != "never")
        recovered = ledger.recovered(corrupt, torn)
        metrics = WalMetrics(registry)
        wal = WriteAheadLog(directory, config, metrics, lock_fd, segments, ledger)
    except BaseException:
        os.close(lock_fd)
        raise
    for state, traces in (("pending", recovered.pending), ("kept", recovered.kept)):
        metrics.replayed_traces.labels(state).inc(len(traces))
        metrics.replayed_spans.labels(state).inc(sum(trace.span_count for trace in traces.values()))
    metrics.corrupt_records.inc(corrupt)
    metrics.torn_bytes.inc(torn)
    if segments:
        log.info(
            "write-ahead log %s: replayed %d segment(s): %d pending trace(s), %d kept trace(s) to deliver again, "
            "%d settled",
            directory, len(segments), len(recovered.pending), len(recovered.kept), len(recovered.settled),
        )
    return wal, recovered


def _lock(directory: str) -> int:
    """Hold the directory's lock file, so that two agents never write one log."""
    path = os.path.join(directory, _LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise WalError(f"write-ahead log directory {directory} is not writable: {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise WalError(f"write-ahead log directory {directory} is in use by another process (it holds {path})") from None
    return fd


def _replay(directory: str, sync: bool) -> tuple[list[_Segment], TraceLedger, int, int]:
    """Every segment's records applied in order; damaged tails cut off, damaged records skipped.
    With ``sync``, the segments are flushed, so what was recovered is durable before anything of
    it is removed."""
    try:
        names = sorted(name for name in os.listdir(directory) if _SEGMENT_NAME.fullmatch(name))
    except OSError as exc:
        raise WalError(f"write-ahead log directory {directory}: cannot list it: {exc.strerror}") from None
    ledger = TraceLedger(replaying=True)
    segments: list[_Segment] = []
    corrupt = torn = 0
    for index, name in enumerate(names):
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as file:
                buffer = file.read()
                if sync:
                    os.fdatasync(file.fileno())
        except OSError as exc:
            raise WalError(f"write-ahead log segment {path}: cannot read it: {exc.strerror}") from None
        try:
            seq, opened = read_segment_header(buffer)
        except ValueError as exc:
            if index == len(names) - 1 and (len(buffer) < SEGMENT_HEADER or not buffer[:SEGMENT_HEADER].strip(b"\0")):
                # the newest file, created but its header never written: a crash in between
                log.warning("write-ahead log segment %s: empty or torn header, removing it", path)
                torn += len(buffer)
                os.unlink(path)
                continue
            raise WalError(
                f"write-ahead log segment {path}: {exc}; move the file out of {directory} to start without it"
            ) from None
        if seq != int(name[:20]):
            raise WalError(f"write-ahead log segment {path}: its header says segment {seq}; the file was renamed")
        if opened:
            ledger.restarted()
        found = scan(buffer)
        view = memoryview(buffer)
        for kind, start, end in found.records:
            try:
                record = decode_payload(kind, view[start + RECORD_HEADER : end])
            except ValueError as exc:
                log.warning("write-ahead log segment %s: record at %d unreadable (%s), skipped", path, start, exc)
                found.corrupt += 1
                continue
            ledger.apply(record, (seq, start, end - start))
        if found.corrupt:
            log.warning("write-ahead log segment %s: skipped %d damaged record(s)", path, found.corrupt)
        corrupt += found.corrupt
        if found.valid_end < len(buffer):
            cut = len(buffer) - found.valid_end
            log.warning(
                "write-ahead log segment %s: %d byte(s) after offset %d are torn or damaged, cutting them off",
                path, cut, found.valid_end,
            )
            torn += cut
            try:
                os.truncate(path, found.valid_end)
            except OSError as exc:
                log.error("write-ahead log segment %s: cannot cut off its damaged tail: %s", path, exc.strerror)
        segments.append(_Segment(seq, path, found.valid_end))
    return segments, ledger, corrupt, torn
