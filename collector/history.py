"""Stats over time: the collector's counters kept as a ring of intervals.

Nothing is counted here: every 10 seconds, on the wall clock's 10-second boundary, the metrics
registry is read and the growth of each counter since the last reading becomes one interval. So
the hot path pays nothing for history, and every agent's intervals start at the same instants,
which lets a fleet's intervals be added up. Ten-second intervals are kept for the last hour; each
one is also added into its minute, and minutes are kept for the last day. A window that ends now
adds the growth since the last reading, so its totals are exact to the moment.

Counts are keyed by tuples (``("traces", "kept", "errors")``); ``read_counts`` says which.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tailsampler.collector.metrics import Metrics
from tailsampler.collector.stats import samples

Key = tuple[str, ...]
Counts = Counter  # Counter[Key]: counts of one interval, only the keys that grew

FINE_STEP, FINE_LENGTH = 10, 360  # 10 s intervals for the last hour
COARSE_STEP, COARSE_LENGTH = 60, 1440  # minutes for the last day
# what an agent publishes for its fleet, every 2 s: the last 5 minutes by 10 s, the last hour by
# minute, without the decision lag's histogram buckets (the fleet gets its mean lag, no p99)
PUBLISHED = ((FINE_STEP, 30), (COARSE_STEP, 60))
_SEPARATOR = "\x1f"  # joins a key's parts in JSON: no policy or service name holds it


def read_counts(metrics: Metrics) -> Counts:
    """Every counter the history keeps, as of now."""
    out: Counts = Counter()
    for labels, value in samples(metrics.spans_received):
        out["spans", "received"] += value
    for labels, value in samples(metrics.spans_refused):
        out["spans", "refused", labels["reason"]] += value
    for labels, value in samples(metrics.late_spans):
        out["spans", "late", labels["decision"]] += value
    for labels, value in samples(metrics.spans_decided):
        out["spans", labels["decision"]] += value
    for labels, value in samples(metrics.traces_decided):
        out["traces", labels["decision"], labels["policy"]] += value
    for labels, value in samples(metrics.policy_votes):
        out["votes", labels["policy"], labels["vote"]] += value
    for labels, value in samples(metrics.early_decisions):
        out["early", labels["reason"]] += value
    for labels, value in samples(metrics.received_bytes):
        out["bytes", "received"] += value
    for _, value in samples(metrics.kept_bytes):
        out["bytes", "kept"] += value
    for labels, value in samples(metrics.service_traces_received):
        out["service", labels["service"], "received"] += value
    for labels, value in samples(metrics.service_traces_kept):
        out["service", labels["service"], "kept"] += value
    for labels, value in samples(metrics.service_spans_kept):
        out["service", labels["service"], "spans_kept"] += value
    for family in metrics.decision_lag.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out["lag", "le", sample.labels["le"]] += sample.value
            elif sample.name.endswith("_count"):
                out["lag", "count"] += sample.value
            elif sample.name.endswith("_sum"):
                out["lag", "sum"] += sample.value
    return +out  # only what is not zero


class Ring:
    """Intervals of ``step`` seconds, keyed by their start (a multiple of ``step``), the last
    ``length`` of them."""

    def __init__(self, step: int, length: int) -> None:
        self.step = step
        self.length = length
        self._intervals: dict[int, Counts] = {}

    def add(self, start: int, counts: Counts) -> None:
        self._intervals.setdefault(start, Counter()).update(counts)
        oldest = start - (self.length - 1) * self.step
        for old in [s for s in self._intervals if s < oldest]:
            del self._intervals[old]

    def since(self, first: int) -> list[tuple[int, Counts]]:
        return sorted((s, c) for s, c in self._intervals.items() if s >= first)


@dataclass(frozen=True, slots=True)
class Extent:
    """The intervals a window covers: ``first`` is the start of its first interval."""

    step: int
    first: int


def extent_of(seconds: float, now: float, step: int) -> Extent:
    """The last ``ceil(seconds / step)`` intervals, the one ``now`` falls in included."""
    current = int(now // step) * step
    return Extent(step, current - (max(1, math.ceil(seconds / step)) - 1) * step)


class History:
    """This agent's counters over time; ``sample`` is called on every 10-second boundary."""

    def __init__(self, read: Callable[[], Counts], clock: Callable[[], float] = time.time) -> None:
        self._read = read
        self._clock = clock
        self.started = clock()
        self._last = read()
        self._last_at = self.started
        self._fine = Ring(FINE_STEP, FINE_LENGTH)
        self._coarse = Ring(COARSE_STEP, COARSE_LENGTH)

    async def sample(self) -> None:
        """Close the interval the last reading fell in with the growth since then."""
        now, counts = self._clock(), self._read()
        grown = counts - self._last
        start = int(self._last_at // FINE_STEP) * FINE_STEP
        self._last, self._last_at = counts, now
        self._fine.add(start, grown)
        self._coarse.add(start // COARSE_STEP * COARSE_STEP, grown)

    def intervals(self, seconds: float, now: float, step: int | None = None) -> tuple[Extent, list[tuple[int, Counts]]]:
        """The intervals of the last ``seconds`` (of ``step`` seconds; by default 10 s ones up to
        an hour, minutes beyond), the one in progress counted up to now."""
        if step is None:
            step = FINE_STEP if seconds <= FINE_STEP * FINE_LENGTH else COARSE_STEP
        ring = self._fine if step == FINE_STEP else self._coarse
        extent = extent_of(seconds, now, ring.step)
        found = dict(ring.since(extent.first))
        live = self._read() - self._last
        if live:
            start = int(self._last_at // ring.step) * ring.step
            found[start] = found.get(start, Counter()) + live
        return extent, sorted(found.items())

    def published(self, now: float) -> dict[str, Any]:
        """The recent intervals, bounded, for the fleet: each resolution as columns of numbers."""
        out: dict[str, Any] = {"started": self.started}
        for step, length in PUBLISHED:
            extent, found = self.intervals(step * length, now, step)
            out[str(step)] = encode(extent, [(start, _unbucketed(counts)) for start, counts in found])
        return out


def _unbucketed(counts: Counts) -> Counts:
    return Counter({key: value for key, value in counts.items() if key[:2] != ("lag", "le")})


def encode(extent: Extent, intervals: list[tuple[int, Counts]]) -> dict[str, Any]:
    """Intervals as columns: where the first starts, and one list of values per key, one value
    per interval from there on."""
    count = max((start - extent.first) // extent.step + 1 for start, _ in intervals) if intervals else 0
    columns: dict[str, list[float | int]] = {}
    for start, counts in intervals:
        index = (start - extent.first) // extent.step
        for key, value in counts.items():
            columns.setdefault(_SEPARATOR.join(key), [0] * count)[index] = _number(value)
    return {"first": extent.first, "step": extent.step, "counts": columns}


def decode(columns: Mapping[str, Any]) -> list[tuple[int, Counts]]:
    first, step = columns.get("first", 0), columns.get("step", FINE_STEP)
    intervals: dict[int, Counts] = {}
    for joined, values in columns.get("counts", {}).items():
        key = tuple(joined.split(_SEPARATOR))
        for index, value in enumerate(values):
            if value:
                intervals.setdefault(first + index * step, Counter())[key] = value
    return sorted(intervals.items())


def add_up(agents: Iterable[list[tuple[int, Counts]]], first: int) -> list[tuple[int, Counts]]:
    """Several agents' intervals added up by start, from ``first`` on."""
    total: dict[int, Counts] = {}
    for intervals in agents:
        for start, counts in intervals:
            if start >= first:
                total.setdefault(start, Counter()).update(counts)
    return sorted(total.items())


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)
