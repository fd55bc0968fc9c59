"""The embedded buffer: a timing wheel of slots in process memory.

A trace sits in the slot of its decision deadline (one slot per tick); a root span moves it to an
earlier slot. Traces, bytes and trace size are bounded; a bound that is hit either refuses the
request (backpressure) or hands the oldest traces to the decider at once (decide_early).
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import time
from typing import Any

from prometheus_client import CollectorRegistry

from tailsampler.collector.config import BufferConfig, BufferLimits, DecisionCacheConfig
from tailsampler.collector.split import Fragment
from tailsampler.common.verdict import Verdict
from tailsampler.policies import LocalTokenBucket

from .base import AppendResult, BufferFull, Claimed, Occupancy, Relief, Settlement, SharedState, TraceBuffer
from .decision_cache import DecisionCache


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
        if relief is not None:
            fragments = self._relieve(fragments, unbuffered, relief, now, result)
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
                raise BufferFull(f"trace buffer full ({what} reached)", retry_after=max(1.0, self._wait_after_root or self._tick))
            result.early = self._evict_oldest(over_traces, over_bytes)
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
        return result

    def _relieve(
        self, fragments: dict[bytes, Fragment], unbuffered: dict[bytes, Verdict | None], relief: Relief, now: float,
        result: AppendResult,
    ) -> dict[bytes, Fragment]:
        """Decide the new traces of a request at once (and rescue relief-dropped traces that
        now show an error); returns the fragments left to buffer or to follow their verdict."""
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
            self._cache.put(trace_id, verdict, now)
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
        return stragglers

    async def occupancy(self) -> Occupancy:
        return Occupancy(len(self._traces), self._bytes)

    def set_decision_cache(self, config: DecisionCacheConfig) -> None:
        self._cache.configure(config)


class LocalState(SharedState):
    """An agent on its own shares nothing: its store is its own memory and its budgets local."""

    async def check(self) -> tuple[bool, str]:
        return True, "in process"

    def bucket(self, key: str, rate: float, capacity: float) -> LocalTokenBucket:
        return LocalTokenBucket(rate, capacity, time.monotonic)

    async def publish(self, counters: dict[str, Any]) -> None:
        """Nowhere to publish: the agent's own counters are the whole fleet's."""

    async def fleet(self) -> None:
        return None
