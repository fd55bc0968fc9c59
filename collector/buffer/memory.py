"""The embedded buffer: a timing wheel of slots in process memory.

A trace sits in the slot of its decision deadline (one slot per tick); a root span moves it to an
earlier slot. Traces, bytes and trace size are bounded; a bound that is hit either refuses the
request (backpressure) or hands the oldest traces to the decider at once (decide_early).

With ``buffer.wal`` every request is written to a write-ahead log (``wal.py``) before the buffer
changes and before the request is acknowledged, and so are a round's decisions and the deliveries
of kept traces; ``open`` replays the log, so an agent that was killed starts where it stopped.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections import deque
from collections.abc import Awaitable
from itertools import chain

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from tailsampler.collector.config import BufferConfig, BufferLimits, DecisionCacheConfig
from tailsampler.collector.split import Fragment
from tailsampler.common.incident import Incident
from tailsampler.common.verdict import Verdict
from tailsampler.policies import LocalTokenBucket

from .base import (
    AppendResult,
    BufferFull,
    BufferUnavailable,
    Claimed,
    Occupancy,
    Relief,
    Settlement,
    SharedState,
    TraceBuffer,
    Undelivered,
)
from .decision_cache import DecisionCache
from .wal import DecisionValue, Recovered, WalError, WalFull, WriteAheadLog, open_wal

log = logging.getLogger(__name__)


class _Trace:
    __slots__ = ("pieces", "nbytes", "first_seen", "slot", "claimed", "early")

    def __init__(self, first_seen: float) -> None:
        self.pieces: list[bytes] = []  # of every fragment appended, joined when claimed
        self.nbytes = 0
        self.first_seen = first_seen
        self.slot = -1
        self.claimed = False
        self.early = ""


class MemoryTraceBuffer(TraceBuffer):
    def __init__(self, limits: BufferLimits, config: BufferConfig, registry: CollectorRegistry) -> None:
        self._wait = limits.decision_wait
        self._wait_after_root = limits.decision_wait_after_root
        self._max_traces = limits.max_traces
        # traces handed to an early decision still hold memory until the decider takes them; a
        # decider that falls this far behind turns decide_early into backpressure
        self._max_early = max(limits.max_traces, 1024)
        self._max_trace_bytes = limits.max_trace_bytes
        self._max_bytes = limits.max_bytes
        self._backpressure = limits.overflow == "backpressure"
        self._tick = limits.tick
        self._traces: dict[bytes, _Trace] = {}
        self._slots: dict[int, dict[bytes, None]] = {}
        self._slot_heap: list[int] = []
        self._early: deque[bytes] = deque()
        self._early_bytes = 0
        self._bytes = 0
        self._cache = DecisionCache(limits.decision_cache)
        self._wal_config = config.wal
        self._registry = registry
        self._wal: WriteAheadLog | None = None
        self._wal_trouble = Incident(log, "write-ahead log")
        self._wal_problem: str | None = None  # why the last write failed, while it is the last

    async def open(self, now: float) -> list[Undelivered]:
        """Open and replay the write-ahead log, if there is one: its pending traces are buffered
        again, its decisions remembered, and its kept traces not delivered everywhere returned."""
        if self._wal_config is None:
            return []
        self._wal, recovered = await asyncio.to_thread(open_wal, self._wal_config, self._registry)
        return self._restore(recovered, now)

    def _restore(self, recovered: Recovered, now: float) -> list[Undelivered]:
        """Pending traces go back with the deadlines their first and root spans gave them (one
        already passed falls due at once); settled traces' verdicts go into the decision cache
        as of when they were made, so late spans follow them."""
        cache = self._cache
        for trace_id, settled in sorted(recovered.settled.items(), key=lambda item: item[1].at):
            if settled.at + cache.ttl > now:
                cache.put(trace_id, _verdict(settled.decision), settled.at)
        for trace_id, found in recovered.pending.items():
            trace = self._traces[trace_id] = _Trace(found.first_seen)
            trace.pieces = [entry.data for entry in found.entries]
            trace.nbytes = sum(map(len, trace.pieces))
            self._bytes += trace.nbytes
            deadline = found.first_seen + self._wait
            if found.root_seen is not None and self._wait_after_root > 0:
                deadline = min(deadline, found.root_seen + self._wait_after_root)
            if self._max_trace_bytes and trace.nbytes > self._max_trace_bytes:
                self._decide_early(trace_id, trace, "size")
            else:
                self._place(trace_id, trace, self._slot_of(max(deadline, now)))
        undelivered = []
        for trace_id, found in recovered.kept.items():
            verdict = _verdict(found.decision)
            cache.put(trace_id, verdict, now)
            undelivered.append(Undelivered(trace_id, found.data, verdict, found.span_count))
        return undelivered

    def _slot_of(self, deadline: float) -> int:
        return math.ceil(deadline / self._tick)

    def _place(self, trace_id: bytes, trace: _Trace, slot: int) -> None:
        if trace.slot >= 0:
            self._slots[trace.slot].pop(trace_id, None)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
            heapq.heappush(self._slot_heap, slot)
        bucket[trace_id] = None
        trace.slot = slot

    def _unslot(self, trace_id: bytes, trace: _Trace) -> None:
        if trace.slot >= 0:
            self._slots[trace.slot].pop(trace_id, None)
            trace.slot = -1

    def _decide_early(self, trace_id: bytes, trace: _Trace, reason: str) -> None:
        self._unslot(trace_id, trace)
        trace.early = reason
        self._early.append(trace_id)
        self._early_bytes += trace.nbytes

    async def append(self, fragments: dict[bytes, Fragment], now: float, relief: Relief | None = None) -> AppendResult:
        result = AppendResult({})
        traces = self._traces
        # traces not buffered: already decided (a cached verdict) or new (None)
        unbuffered = {tid: self._cache.get(tid, now) for tid in fragments if tid not in traces}
        request = fragments
        if relief is not None:
            fragments = self._relieve(fragments, unbuffered, relief, result)
            new = 0  # relief decided every new trace at once
        else:
            new = sum(1 for cached in unbuffered.values() if cached is None)
        incoming = sum(f.size for f in fragments.values())
        # traces already waiting for an early decision are on their way out: they do not count
        over_traces = len(traces) - len(self._early) + new - self._max_traces
        over_bytes = self._bytes - self._early_bytes + incoming - self._max_bytes
        if over_traces > 0 or over_bytes > 0:
            if self._backpressure or len(self._early) >= self._max_early:
                what = "num_traces" if over_traces > 0 else "max_bytes"
                raise BufferFull(f"trace buffer full ({what} reached)", retry_after=self._retry_after)
            result.early = self._evict_oldest(over_traces, over_bytes)
        logged = None if self._wal is None else self._log(request, unbuffered, result, incoming, now)
        for trace_id, verdict in chain(result.decided_now.items(), result.late_kept.items()):  # relief's
            self._cache.put(trace_id, verdict, now)
        for trace_id, fragment in fragments.items():
            trace = traces.get(trace_id)
            if trace is None:
                cached = unbuffered[trace_id]
                if cached is not None:
                    if cached.keep:
                        result.late_kept[trace_id] = cached
                    else:
                        result.late_dropped_spans += fragment.span_count
                    continue
                trace = traces[trace_id] = _Trace(now)
                self._place(trace_id, trace, self._slot_of(now + self._wait))
            trace.pieces += fragment.pieces  # as they are: envelopes stay shared between traces
            size = fragment.size
            trace.nbytes += size
            self._bytes += size
            if trace.claimed:
                continue
            if trace.early:
                self._early_bytes += size
                continue
            if self._max_trace_bytes and trace.nbytes > self._max_trace_bytes:
                self._decide_early(trace_id, trace, "size")
                result.early += 1
            elif fragment.has_root and self._wait_after_root > 0:
                slot = self._slot_of(now + self._wait_after_root)
                if slot < trace.slot:
                    self._place(trace_id, trace, slot)
        if logged is not None:
            try:
                await logged
            except WalError as exc:  # fsync always: the flush failed, so the request is not durable
                raise self._unavailable(exc) from None
        return result

    @property
    def _retry_after(self) -> float:
        return max(1.0, self._wait_after_root or self._tick)

    def _log(
        self, fragments: dict[bytes, Fragment], unbuffered: dict[bytes, Verdict | None], result: AppendResult,
        incoming: int, now: float,
    ) -> Awaitable[None]:
        """Write the request to the log before the buffer changes: the fragments it buffers, and
        the decisions made as it came in (late spans of kept traces with their fragments; overload
        relief's verdicts, with the fragments of the traces it kept), so that a restart buffers,
        delivers again or remembers each as this request did. Late spans of dropped traces are
        discarded, so they are not logged. A log that is full applies the overflow behaviour."""
        assert self._wal is not None
        logged, decided = fragments, dict(result.decided_now)
        decided.update(result.late_kept)  # relief's rescues: the only ones known yet
        if decided or any(unbuffered.values()):
            logged = {}
            for trace_id, fragment in fragments.items():
                verdict = decided.get(trace_id)
                if verdict is None and (verdict := unbuffered.get(trace_id)) is not None:
                    if not verdict.keep:
                        continue
                    decided[trace_id] = verdict
                if verdict is None or verdict.keep:
                    logged[trace_id] = fragment
        try:
            written = self._wal.append(logged, now, decided=decided)
        except WalFull as exc:
            if self._backpressure or len(self._early) >= self._max_early:
                raise BufferFull(f"{exc} (buffer.wal.max_bytes)", retry_after=self._retry_after) from None
            # a segment's worth, so that the oldest segment file can go once they are decided
            moved = self._evict_oldest(0, max(incoming, self._wal_config.segment_bytes))
            raise BufferFull(
                f"{exc} (buffer.wal.max_bytes); {moved} trace(s) are decided now to free it", retry_after=self._retry_after
            ) from None
        except WalError as exc:
            raise self._unavailable(exc) from None
        if self._wal_problem is not None:
            self._wal_problem = None
            self._wal_trouble.resolved()
        return written

    def _unavailable(self, exc: WalError) -> BufferUnavailable:
        self._wal_problem = str(exc)
        self._wal_trouble.failed(f"{exc}; requests are refused")
        return BufferUnavailable(str(exc))

    def _relieve(
        self, fragments: dict[bytes, Fragment], unbuffered: dict[bytes, Verdict | None], relief: Relief,
        result: AppendResult,
    ) -> dict[bytes, Fragment]:
        """Decide the new traces of a request at once (and rescue relief-dropped traces that
        now show an error); returns the fragments left to buffer or to follow their verdict. The
        verdicts are remembered once the request is logged."""
        rest = dict(fragments)
        for trace_id, cached in unbuffered.items():
            if cached is not None and cached != relief.dropped:
                continue
            verdict = relief.choose(trace_id, fragments[trace_id])
            if cached is None:
                result.decided_now[trace_id] = verdict
            elif verdict.keep:
                result.late_kept[trace_id] = verdict
                result.rescued += 1
            else:
                continue  # relief dropped it and still would: it follows that verdict below
            del rest[trace_id]
        return rest

    def _evict_oldest(self, over_traces: int, over_bytes: int) -> int:
        """Send the traces nearest their deadline to the decider now, until the request fits."""
        moved = 0
        while (over_traces > 0 or over_bytes > 0) and self._slot_heap:
            slot = self._slot_heap[0]
            bucket = self._slots.get(slot)
            if not bucket:
                heapq.heappop(self._slot_heap)
                self._slots.pop(slot, None)
                continue
            trace_id = next(iter(bucket))
            trace = self._traces[trace_id]
            self._decide_early(trace_id, trace, "overflow")
            over_traces -= 1
            over_bytes -= trace.nbytes
            moved += 1
        return moved

    def _hand_out(self, trace_id: bytes, reason: str) -> Claimed:
        trace = self._traces[trace_id]
        self._unslot(trace_id, trace)
        if trace.early:
            self._early_bytes -= trace.nbytes
        trace.claimed = True
        data = b"".join(trace.pieces)
        trace.pieces.clear()
        return Claimed(trace_id, data, reason)

    async def claim_due(self, now: float, limit: int, *, draining: bool = False) -> list[Claimed]:
        if draining:
            if self._wal is not None:
                return []  # nothing is lost: the log has them for the next start
            pending = [tid for tid, trace in self._traces.items() if not trace.claimed][:limit]
            return [self._hand_out(trace_id, "shutdown") for trace_id in pending]
        out: list[Claimed] = []
        while self._early and len(out) < limit:
            trace_id = self._early.popleft()
            trace = self._traces.get(trace_id)
            if trace is not None and not trace.claimed:
                out.append(self._hand_out(trace_id, trace.early))
        current = math.floor(now / self._tick)
        heap = self._slot_heap
        while heap and heap[0] <= current and len(out) < limit:
            bucket = self._slots.get(heap[0])
            if not bucket:
                self._slots.pop(heapq.heappop(heap), None)
                continue
            claimed = self._hand_out(next(iter(bucket)), "deadline")
            claimed.due = heap[0] * self._tick
            out.append(claimed)
        return out

    async def renew(self, now: float) -> None:
        """Nothing to do: claims in process memory do not expire."""

    async def settle(self, settlements: list[Settlement], now: float) -> dict[bytes, bytes]:
        stragglers: dict[bytes, bytes] = {}
        for settlement in settlements:
            trace = self._traces.pop(settlement.trace_id, None)
            if trace is None:
                continue
            self._bytes -= trace.nbytes
            if trace.pieces:
                stragglers[settlement.trace_id] = b"".join(trace.pieces)
            self._cache.put(settlement.trace_id, settlement.verdict, now)
        if self._wal is not None and stragglers:
            # spans that arrived after a trace was logged dropped made it pending in the log again
            dropped = {s.trace_id: s.verdict for s in settlements if s.trace_id in stragglers and not s.verdict.keep}
            self._write(self._wal.decided, dropped, now)
        return stragglers

    def decided(self, settlements: list[Settlement], now: float) -> None:
        if self._wal is not None:
            self._write(self._wal.decided, {s.trace_id: s.verdict for s in settlements}, now)

    def delivered(self, settlements: list[Settlement], now: float) -> None:
        if self._wal is not None:
            self._write(self._wal.delivered, {s.trace_id: s.verdict for s in settlements}, now)

    def _write(
        self, record: Callable[[dict[bytes, DecisionValue], float], Awaitable[None]], decisions: dict[bytes, Verdict],
        now: float,
    ) -> None:
        """A decision or delivery record; one that cannot be written only costs a decision made
        again, or a delivery repeated, after a restart."""
        try:
            record(decisions, now)  # not awaited: a record lost in a machine crash is made again
        except WalError as exc:
            self._wal_problem = str(exc)
            self._wal_trouble.failed(f"{exc}; decisions and deliveries are not logged")

    def health(self) -> tuple[bool, str]:
        """Readiness: a log that cannot be written refuses every request."""
        if self._wal is None:
            return True, "in process"
        failure = self._wal.failure or self._wal_problem
        if failure is not None:
            return False, str(failure)
        return True, f"in process, write-ahead log {self._wal.directory}"

    async def occupancy(self) -> Occupancy:
        return Occupancy(len(self._traces), self._bytes)

    def set_decision_cache(self, config: DecisionCacheConfig) -> None:
        self._cache.configure(config)

    async def close(self) -> None:
        """Flush and close the log: what is pending or undelivered stays in it for the next start."""
        if self._wal is not None:
            await asyncio.to_thread(self._wal.close)


def _verdict(decision: DecisionValue) -> Verdict:
    return Verdict(decision.keep, decision.policy, decision.sample_rate)


class LocalState(SharedState):
    """An agent on its own shares nothing: its store is its own memory (and write-ahead log), its
    budgets local."""

    def __init__(self, health: Callable[[], tuple[bool, str]]) -> None:
        self._health = health

    async def check(self) -> tuple[bool, str]:
        return self._health()

    def bucket(self, key: str, rate: float, capacity: float) -> LocalTokenBucket:
        return LocalTokenBucket(rate, capacity, time.monotonic)

    async def publish(self, counters: dict[str, Any]) -> None:
        """Nowhere to publish: the agent's own counters are the whole fleet's."""

    async def fleet(self) -> None:
        return None
