"""What a log's records say, in order: each trace's fate, and what a restarted buffer gets back.

The same rules apply when the log is replayed on start and while it runs (``TraceLedger``), so
the segments a running log removes are exactly those a replay would find nothing live in:

- an append adds entries to its traces; a trace that was settled starts afresh (pending);
  an append's decisions were made at ingest: a kept one (late spans, overload relief) is one
  more delivery to await, a dropped one (overload relief) settles its trace;
- a carry record replaces all earlier entries of its traces with the copies it holds;
- a drop decision settles the trace; a keep decision makes it kept, awaiting one delivery;
- a delivery record settles a kept trace once every delivery it awaits is done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .wal_format import APPEND, CARRY, DELIVER, DecisionValue, Entry, Record

Location = tuple[int, int, int]  # segment sequence, offset of the record, its length


class LiveTrace:
    """A trace the log must keep: pending, or kept and not yet delivered to every exporter.

    A plain slotted class: one is made per trace on the append path, where a dataclass's
    generated ``__init__`` with default factories costs several times more."""

    __slots__ = ("segment", "records", "nbytes", "decision", "deliveries", "entries")

    def __init__(self, segment: int, entries: list[Entry] | None) -> None:
        self.segment = segment  # the oldest segment holding one of its current entries
        self.records: list[Location] = []  # of its current entries, in log order
        self.nbytes = 0  # fragment bytes of its current entries
        self.decision: DecisionValue | None = None  # set once kept
        self.deliveries = 0  # deliveries awaited before it is settled
        self.entries = entries  # its entries, kept during a replay only


@dataclass(frozen=True, slots=True)
class Settled:
    decision: DecisionValue
    at: float  # wall-clock seconds of the record that settled it


@dataclass(slots=True)
class RecoveredTrace:
    """A trace found live in the log: its fragments in the order they were appended."""

    entries: list[Entry]
    decision: DecisionValue | None  # None while pending; a kept one awaits delivery

    @property
    def first_seen(self) -> float:
        return self.entries[0].received

    @property
    def root_seen(self) -> float | None:
        """When the first fragment with a root span arrived, if one did."""
        return next((entry.received for entry in self.entries if entry.has_root), None)

    @property
    def span_count(self) -> int:
        return sum(entry.span_count for entry in self.entries)

    @property
    def data(self) -> bytes:
        """The trace's fragments joined: a valid ``TracesData`` body."""
        return b"".join(entry.data for entry in self.entries)


@dataclass(slots=True)
class Recovered:
    """What ``open_wal`` found: traces to buffer again, kept traces to deliver again, decisions
    to remember, and what could not be read."""

    pending: dict[bytes, RecoveredTrace]  # in the order the log first holds them
    kept: dict[bytes, RecoveredTrace]  # kept, not delivered to every exporter: deliver again
    settled: dict[bytes, Settled]  # dropped, or kept and delivered: not to decide again
    corrupt_records: int = 0  # damaged records skipped between intact ones
    torn_bytes: int = 0  # bytes cut off damaged or torn segment tails


class TraceLedger:
    """Live traces by ID and the segments they pin; during a replay, also their entries and the
    decisions of settled traces (a running log forgets those)."""

    def __init__(self, replaying: bool) -> None:
        self.live: dict[bytes, LiveTrace] = {}
        self.pins: dict[int, set[bytes]] = {}  # segment -> live traces whose oldest entry is there
        self.live_bytes = 0
        self.settled: dict[bytes, Settled] = {}
        self._replaying = replaying

    def _start(self, trace_id: bytes, segment: int) -> LiveTrace:
        trace = self.live[trace_id] = LiveTrace(segment, [] if self._replaying else None)
        self._pinned(segment).add(trace_id)
        if self._replaying:
            self.settled.pop(trace_id, None)
        return trace

    def _pinned(self, segment: int) -> set[bytes]:
        pinned = self.pins.get(segment)
        if pinned is None:
            pinned = self.pins[segment] = set()
        return pinned

    def logged(self, location: Location, trace_ids: Iterable[bytes], sizes: list[int]) -> None:
        """A running log's append record: ``add`` for each of its traces (each appears once),
        as one loop, since it runs for every trace of every request."""
        live = self.live
        pinned = self._pinned(location[0])
        for trace_id, size in zip(trace_ids, sizes):
            trace = live.get(trace_id)
            if trace is None:
                trace = live[trace_id] = LiveTrace(location[0], None)
                pinned.add(trace_id)
            trace.records.append(location)
            trace.nbytes += size
        self.live_bytes += sum(sizes)

    def move(self, trace_id: bytes, trace: LiveTrace, segment: int) -> None:
        """The trace's entries are replaced by copies in ``segment`` (a carry record)."""
        self.pins[trace.segment].discard(trace_id)
        self._pinned(segment).add(trace_id)
        trace.segment = segment
        trace.records = []
        self.live_bytes -= trace.nbytes
        trace.nbytes = 0
        if trace.entries is not None:
            trace.entries = []

    def settle(self, trace_id: bytes, decision: DecisionValue, at: float) -> None:
        trace = self.live.pop(trace_id, None)
        if trace is not None:
            self.pins[trace.segment].discard(trace_id)
            self.live_bytes -= trace.nbytes
        if self._replaying:
            self.settled[trace_id] = Settled(decision, at)

    def add(self, trace_id: bytes, location: Location, nbytes: int, entry: Entry | None = None) -> LiveTrace:
        trace = self.live.get(trace_id)
        if trace is None:
            trace = self._start(trace_id, location[0])
        if not trace.records or trace.records[-1] is not location:
            trace.records.append(location)
        trace.nbytes += nbytes
        self.live_bytes += nbytes
        if trace.entries is not None and entry is not None:
            trace.entries.append(entry)
        return trace

    def keep(self, trace_id: bytes, decision: DecisionValue, at: float) -> None:
        """Kept: settled after one more delivery (a trace not live has nothing to deliver)."""
        trace = self.live.get(trace_id)
        if trace is None:
            if self._replaying:
                self.settled[trace_id] = Settled(decision, at)
            return
        trace.decision = decision
        trace.deliveries += 1

    def delivered(self, trace_id: bytes, decision: DecisionValue, at: float) -> None:
        trace = self.live.get(trace_id)
        if trace is not None and trace.deliveries > 1:
            trace.deliveries -= 1
            return
        self.settle(trace_id, decision, at)

    def restarted(self) -> None:
        """A new agent opened the log: it delivers each kept trace's data once more, whatever
        deliveries the previous one still awaited."""
        for trace in self.live.values():
            if trace.decision is not None:
                trace.deliveries = 1

    def apply(self, record: Record, location: Location) -> None:
        """A record read back during a replay."""
        kind = record.kind
        if kind == CARRY:
            carried: set[bytes] = set()
            for entry in record.entries:
                trace = self.live.get(entry.trace_id)
                if trace is not None and entry.trace_id not in carried:
                    self.move(entry.trace_id, trace, location[0])
                carried.add(entry.trace_id)
                self.add(entry.trace_id, location, len(entry.data), entry)
            for (trace_id, decision), awaiting in zip(record.decisions, record.awaiting):
                if (trace := self.live.get(trace_id)) is not None:
                    trace.decision, trace.deliveries = decision, awaiting
            return
        if kind == APPEND:
            for entry in record.entries:
                self.add(entry.trace_id, location, len(entry.data), entry)
        for trace_id, decision in record.decisions:
            if kind == DELIVER:
                self.delivered(trace_id, decision, record.time)
            elif decision.keep:
                self.keep(trace_id, decision, record.time)
            else:
                self.settle(trace_id, decision, record.time)

    def recovered(self, corrupt: int, torn: int) -> Recovered:
        """The replay's result; from here on the ledger follows the running log."""
        pending: dict[bytes, RecoveredTrace] = {}
        kept: dict[bytes, RecoveredTrace] = {}
        for trace_id, trace in self.live.items():
            found = RecoveredTrace(trace.entries or [], trace.decision)
            trace.entries = None
            (pending if trace.decision is None else kept)[trace_id] = found
        self.restarted()
        settled, self.settled = self.settled, {}
        self._replaying = False
        return Recovered(pending, kept, settled, corrupt, torn)
