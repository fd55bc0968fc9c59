"""Making the log's writes durable, off the event loop thread.

``always``: the awaitable a write returns completes once an ``fdatasync`` covers the write.
The writes of one turn of the event loop, and those that arrive while an ``fdatasync`` runs,
share the next one (group commit), so a busy agent pays one disk flush per flush time, not one
per request. ``interval``: the thread flushes
whatever was written every ``fsync_interval``, and writes complete at once. ``never``: no thread
and no flush; the kernel writes dirty pages back when it will.

Segment files are removed only once the records that made them removable are flushed: a carried
trace's old segment must not disappear before its copy is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable

from prometheus_client import Histogram

from .wal_format import WalError

log = logging.getLogger(__name__)


class _Done:
    """An awaitable that is already complete: what a write returns when nothing is to wait for."""

    __slots__ = ()

    def __await__(self):  # type: ignore[no-untyped-def]
        return iter(())


DONE = _Done()


class Syncer:
    def __init__(self, mode: str, interval: float, directory: str, latency: Histogram) -> None:
        self._mode = mode
        self._interval = interval
        self._directory = directory
        self._latency = latency
        self._cond = threading.Condition()
        self._fd = -1
        self._written = 0  # log position (bytes written since open) the last write reached
        self._synced = 0
        self._retired: list[int] = []  # segments no longer written to: flush, then close
        self._directory_dirty = False
        self._removals: list[tuple[int, str, int]] = []  # (position, path, size)
        self.removal_bytes = 0  # of segments waiting for their removal
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._kick_due = False
        self._stopping = False
        self.failure: WalError | None = None
        self._thread: threading.Thread | None = None
        if mode != "never":
            self._thread = threading.Thread(target=self._run, name="wal-fsync", daemon=True)
            self._thread.start()

    def use(self, fd: int) -> None:
        """Writes go to ``fd`` from now on; the previous file is flushed and closed."""
        with self._cond:
            if self._fd >= 0:
                if self._thread is None:
                    os.close(self._fd)
                else:
                    self._retired.append(self._fd)
            self._fd = fd
            self._directory_dirty = True
            self._cond.notify()

    def wrote(self, position: int, wait: bool) -> Awaitable[None]:
        """A write reached log position ``position``. With ``wait`` in mode ``always``, the result
        completes once a flush covers it; otherwise at once."""
        with self._cond:
            if self.failure is not None:
                raise self.failure
            self._written = position
            if not wait or self._mode != "always":
                return DONE
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._waiters.append((position, future))
        if not self._kick_due:  # wake the thread once per turn of the loop, for all of its writes
            self._kick_due = True
            loop.call_soon(self._kick)
        return future

    def _kick(self) -> None:
        self._kick_due = False
        with self._cond:
            self._cond.notify()

    def remove_after(self, position: int, path: str, size: int) -> None:
        """Remove the file at ``path`` once the log is durable up to ``position``."""
        if self._thread is None:
            _remove(path)
            return
        with self._cond:
            self._written = max(self._written, position)
            self._removals.append((position, path, size))
            self.removal_bytes += size
            self._cond.notify()

    def close(self) -> None:
        """Flush what is written (unless ``never``), then close the files."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join()
        for fd in (*self._retired, self._fd):
            if fd >= 0:
                os.close(fd)
        self._retired, self._fd = [], -1

    def _due(self) -> bool:
        return bool(self._waiters or self._removals or self._retired or self._directory_dirty)

    def _run(self) -> None:
        next_flush = time.monotonic() + self._interval
        while True:
            with self._cond:
                while not self._stopping:
                    if self._mode == "always":
                        if self._due():
                            break
                        self._cond.wait()
                    else:
                        left = next_flush - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                stopping = self._stopping
                target, fd, retired, dirty = self._written, self._fd, self._retired, self._directory_dirty
                self._retired, self._directory_dirty = [], False
                waiters, self._waiters = self._waiters, []
                removals = [r for r in self._removals if r[0] <= target]
                self._removals = [r for r in self._removals if r[0] > target]
            next_flush = time.monotonic() + self._interval
            error = self._flush([*retired, fd] if target > self._synced else retired, dirty)
            for old in retired:
                os.close(old)
            if error is None:
                self._synced = target
                for _, path, _ in removals:
                    _remove(path)
            with self._cond:
                if error is None:
                    self.removal_bytes -= sum(size for _, _, size in removals)
                else:  # nothing will be flushed any more: every writer waiting hears why
                    self.failure = error
                    self._removals[:0] = removals
                    waiters += self._waiters
                    self._waiters = []
            _resolve(waiters, error)
            if stopping or error is not None:
                return

    def _flush(self, fds: list[int], directory: bool) -> WalError | None:
        started = time.perf_counter()
        try:
            for fd in fds:
                if fd >= 0:
                    os.fdatasync(fd)
            if directory:
                dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            error = WalError(f"write-ahead log {self._directory}: fsync failed: {exc.strerror}")
            log.error("%s; refusing further writes, since what the kernel kept is now unknown", error)
            return error
        if fds or directory:
            self._latency.observe(time.perf_counter() - started)
        return None


def _resolve(waiters: list[tuple[int, asyncio.Future[None]]], error: WalError | None) -> None:
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, future in waiters:
        loops.setdefault(future.get_loop(), []).append(future)
    for loop, futures in loops.items():
        try:
            loop.call_soon_threadsafe(_complete, futures, error)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _complete(futures: list[asyncio.Future[None]], error: WalError | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("write-ahead log: cannot remove settled segment %s: %s", path, exc.strerror)
