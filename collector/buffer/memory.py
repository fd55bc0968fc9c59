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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import chain, islice, repeat
from operator import attrgetter, getitem, itemgetter
from typing import Any

from prometheus_client import CollectorRegistry

from tailsampler.collector.config import BufferConfig, BufferLimits, DecisionCacheConfig
from tailsampler.collector.wire import Fragment, merge_facts
from tailsampler.common.incident import Incident
from tailsampler.common.trace_facts import BYTE_SIZE, byte_size
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
    __slots__ = ("pieces", "facts", "slot", "claimed", "early")

    def __init__(self, pieces: list[bytes], facts: bytes, slot: int) -> None:
        self.pieces = pieces  # of every fragment appended, joined when claimed (never extended in
        # place: a fragment's list is its own)
        self.facts = facts  # merged as fragments arrive; its byte count is the trace's size
        self.slot = slot
        self.claimed = False
        self.early = ""


_PIECES = attrgetter("pieces")
_FACTS = attrgetter("facts")
_SIZE = attrgetter("size")
_TRACE_ID = itemgetter(0)


def _sizes(records: Iterable[bytes]) -> Iterator[int]:
    """The byte counts of facts records, in C-level passes (``trace_facts.byte_size`` of each)."""
    return map(int.from_bytes, map(getitem, records, repeat(BYTE_SIZE)), repeat("little"))


class MemoryTraceBuffer(TraceBuffer):
    """Work is done per request and per round where it can be: a request's new traces are placed
    in their slot together, a slot's traces are claimed together, a round is settled and its
    verdicts remembered together; only traces seen before, and bounds that are hit, cost a step
    of their own."""

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
                cache.put([(trace_id, _verdict(settled.decision))], settled.at)
        for trace_id, found in recovered.pending.items():
            facts = merge_facts(b"".join(entry.facts for entry in found.entries))
            trace = self._traces[trace_id] = _Trace([entry.data for entry in found.entries], facts, -1)
            size = _size_of(trace)
            self._bytes += size
            deadline = found.first_seen + self._wait
            if found.root_seen is not None and self._wait_after_root > 0:
                deadline = min(deadline, found.root_seen + self._wait_after_root)
            if self._max_trace_bytes and size > self._max_trace_bytes:
                self._decide_early(trace_id, trace, "size")
            else:
                self._place(trace_id, trace, self._slot_of(max(deadline, now)))
        kept = [(trace_id, _verdict(found.decision)) for trace_id, found in recovered.kept.items()]
        cache.put(kept, now)
        return [
            Undelivered(trace_id, found.data, verdict, found.span_count)
            for (trace_id, verdict), found in zip(kept, recovered.kept.values())
        ]

    def _slot_of(self, deadline: float) -> int:
        return math.ceil(deadline / self._tick)

    def _bucket(self, slot: int) -> dict[bytes, None]:
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
            heapq.heappush(self._slot_heap, slot)
        return bucket

    def _place(self, trace_id: bytes, trace: _Trace, slot: int) -> None:
        if trace.slot >= 0:
            self._slots[trace.slot].pop(trace_id, None)
        self._bucket(slot)[trace_id] = None
        trace.slot = slot

    def _unslot(self, trace_id: bytes, trace: _Trace) -> None:
        if trace.slot >= 0:
            self._slots[trace.slot].pop(trace_id, None)
            trace.slot = -1

    def _decide_early(self, trace_id: bytes, trace: _Trace, reason: str) -> None:
        self._unslot(trace_id, trace)
        trace.early = reason
        self._early.append(trace_id)
        self._early_bytes += _size_of(trace)

    async def append(self, fragments: dict[bytes, Fragment], now: float, relief: Relief | None = None) -> AppendResult:
        result = AppendResult({})
        traces = self._traces
        held = [tid for tid in fragments if tid in traces]
        outside = [tid for tid in fragments if tid not in traces] if held else list(fragments)
        cached = self._cache.found(outside, now)  # traces not buffered: already decided, or new
        new = [tid for tid in outside if tid not in cached] if cached else outside
        request = fragments
        if relief is not None:
            fragments = self._relieve(fragments, new, cached, relief, result)
            new = []  # relief decided every new trace at once
        incoming = sum(map(_SIZE, fragments.values()))
        # traces already waiting for an early decision are on their way out: they do not count
        over_traces = len(traces) - len(self._early) + len(new) - self._max_traces
        over_bytes = self._bytes - self._early_bytes + incoming - self._max_bytes
        if over_traces > 0 or over_bytes > 0:
            if self._backpressure or len(self._early) >= self._max_early:
                what = "num_traces" if over_traces > 0 else "max_bytes"
                raise BufferFull(f"trace buffer full ({what} reached)", retry_after=self._retry_after)
            result.early = self._evict_oldest(over_traces, over_bytes)
        logged = None if self._wal is None else self._log(request, cached, result, incoming, now)
        relieved = list(chain(result.decided_now.items(), result.late_kept.items()))
        if relieved:
            self._cache.put(relieved, now)
        for trace_id, verdict in cached.items():
            if trace_id not in fragments:
                continue  # relief rescued it: its fragment left as a late span
            if verdict.keep:
                result.late_kept[trace_id] = verdict
            else:
                result.late_dropped_spans += fragments[trace_id].span_count
        self._bytes += incoming - sum(map(_SIZE, map(fragments.__getitem__, cached.keys() & fragments.keys())))
        if new:
            self._take_new(new, fragments, now, result)
        for trace_id in held:
            self._take_more(trace_id, traces[trace_id], fragments[trace_id], now, result)
        if logged is not None:
            try:
                await logged
            except WalError as exc:  # fsync always: the flush failed, so the request is not durable
                raise self._unavailable(exc) from None
        return result

    def _take_new(self, new: list[bytes], fragments: dict[bytes, Fragment], now: float, result: AppendResult) -> None:
        """Buffer traces seen for the first time, all in their slot at once (a root's fragment
        puts its trace in the earlier slot of the wait after a root)."""
        traces = self._traces
        parts = list(map(fragments.__getitem__, new))
        slot = self._slot_of(now + self._wait)
        traces.update(zip(new, map(_Trace, map(_PIECES, parts), map(_FACTS, parts), repeat(slot))))
        waiting = new
        if self._wait_after_root > 0 and (root_slot := self._slot_of(now + self._wait_after_root)) < slot:
            rooted = [tid for tid, fragment in zip(new, parts) if fragment.has_root]
            if rooted:
                self._bucket(root_slot).update(dict.fromkeys(rooted))
                for trace_id in rooted:
                    traces[trace_id].slot = root_slot
                waiting = [tid for tid, fragment in zip(new, parts) if not fragment.has_root]
        self._bucket(slot).update(dict.fromkeys(waiting))
        if self._max_trace_bytes:
            for trace_id, fragment in zip(new, parts):
                if fragment.size > self._max_trace_bytes:
                    self._decide_early(trace_id, traces[trace_id], "size")
                    result.early += 1

    def _take_more(self, trace_id: bytes, trace: _Trace, fragment: Fragment, now: float, result: AppendResult) -> None:
        """A fragment of a trace already buffered (or being decided: its spans come back from settle)."""
        # as they are (envelopes stay shared between traces), in a new list: the first fragment's
        # is the trace's own until then
        trace.pieces = trace.pieces + fragment.pieces
        trace.facts = merge_facts(trace.facts + fragment.facts)
        if trace.claimed:
            return
        if trace.early:
            self._early_bytes += fragment.size
            return
        if self._max_trace_bytes and _size_of(trace) > self._max_trace_bytes:
            self._decide_early(trace_id, trace, "size")
            result.early += 1
        elif fragment.has_root and self._wait_after_root > 0:
            slot = self._slot_of(now + self._wait_after_root)
            if slot < trace.slot:
                self._place(trace_id, trace, slot)


    @property
    def _retry_after(self) -> float:
        return max(1.0, self._wait_after_root or self._tick)

    def _log(
        self, fragments: dict[bytes, Fragment], cached: dict[bytes, Verdict], result: AppendResult, incoming: int,
        now: float,
    ) -> Awaitable[None]:
        """Write the request to the log before the buffer changes: the fragments it buffers, and
        the decisions made as it came in (late spans of kept traces with their fragments; overload
        relief's verdicts, with the fragments of the traces it kept), so that a restart buffers,
        delivers again or remembers each as this request did. Late spans of dropped traces are
        discarded, so they are not logged. A log that is full applies the overflow behaviour."""
        assert self._wal is not None
        logged, decided = fragments, dict(result.decided_now)
        decided.update(result.late_kept)  # relief's rescues: the only ones known yet
        if decided or cached:
            logged = {}
            for trace_id, fragment in fragments.items():
                verdict = decided.get(trace_id)
                if verdict is None and (verdict := cached.get(trace_id)) is not None:
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
        self, fragments: dict[bytes, Fragment], new: list[bytes], cached: dict[bytes, Verdict], relief: Relief,
        result: AppendResult,
    ) -> dict[bytes, Fragment]:
        """Decide the new traces of a request at once (and rescue relief-dropped traces that
        now show an error); returns the fragments left to buffer or to follow their verdict. The
        verdicts are remembered once the request is logged."""
        rest = dict(fragments)
        for trace_id in [*new, *(tid for tid, verdict in cached.items() if verdict == relief.dropped)]:
            verdict = relief.choose(trace_id, fragments[trace_id])
            if trace_id not in cached:
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
            over_bytes -= _size_of(trace)
            moved += 1
        return moved

    def _hand_out(self, trace_ids: list[bytes], reason: str, due: float = 0.0) -> list[Claimed]:
        """Claim these traces (already out of their slots) for one decider."""
        picked = list(map(self._traces.__getitem__, trace_ids))
        datas = list(map(b"".join, map(_PIECES, picked)))
        facts = list(map(_FACTS, picked))
        for trace in picked:
            trace.claimed = True
            trace.slot = -1
            trace.pieces = []  # what arrives from now on comes back from settle
            if trace.early:
                self._early_bytes -= _size_of(trace)
        return list(map(Claimed, trace_ids, datas, facts, repeat(reason), repeat(due)))

    async def claim_due(self, now: float, limit: int, *, draining: bool = False) -> list[Claimed]:
        if draining:
            if self._wal is not None:
                return []  # nothing is lost: the log has them for the next start
            pending = [tid for tid, trace in self._traces.items() if not trace.claimed][:limit]
            for trace_id in pending:
                self._unslot(trace_id, self._traces[trace_id])
            return self._hand_out(pending, "shutdown")
        out: list[Claimed] = []
        while self._early and len(out) < limit:
            trace_id = self._early.popleft()
            trace = self._traces.get(trace_id)
            if trace is not None and not trace.claimed:
                out += self._hand_out([trace_id], trace.early)
        current = math.floor(now / self._tick)
        heap, slots = self._slot_heap, self._slots
        while heap and heap[0] <= current and len(out) < limit:
            slot = heap[0]
            bucket = slots.get(slot)
            if len(bucket or ()) <= limit - len(out):  # the whole slot
                heapq.heappop(heap)
                slots.pop(slot, None)
                trace_ids = list(bucket or ())
            else:
                trace_ids = list(islice(bucket, limit - len(out)))  # type: ignore[arg-type]
                deque(map(bucket.__delitem__, trace_ids), 0)  # type: ignore[union-attr]
            if trace_ids:
                out += self._hand_out(trace_ids, "deadline", slot * self._tick)
        return out

    async def renew(self, now: float) -> None:
        """Nothing to do: claims in process memory do not expire."""

    async def settle(self, settlements: list[Settlement], now: float) -> dict[bytes, bytes]:
        traces = self._traces
        settled = [s for s in settlements if s.trace_id in traces]
        popped = list(map(traces.pop, map(_TRACE_ID, settled)))
        self._bytes -= sum(_sizes(map(_FACTS, popped)))
        self._cache.put(settled, now)
        stragglers = {s.trace_id: b"".join(trace.pieces) for s, trace in zip(settled, popped) if trace.pieces}
        if self._wal is not None and stragglers:
            # spans that arrived after a trace was logged dropped made it pending in the log again
            dropped = {s.trace_id: s.verdict for s in settled if s.trace_id in stragglers and not s.verdict.keep}
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


def _size_of(trace: _Trace) -> int:
    return byte_size(trace.facts)


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
