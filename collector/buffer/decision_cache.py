"""Kept and dropped verdicts remembered per trace, so late spans follow their trace's fate.

Two bounded maps (kept traces are rarer and matter more, so they get their own room) with a
TTL, in process; the Redis buffer keeps the same verdicts in the traces' own keys instead.

A decision round settles hundreds of traces at once and a request asks about dozens, so both
work on batches: one ``dict.update`` puts a round's verdicts, each entry sharing its round's
expiry, and a request whose traces are all new (the common case) is answered by one set
comparison. Entries leave oldest first when a map is full; one that is read is moved to the
end, as in an LRU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import compress, islice, repeat
from operator import attrgetter, itemgetter, not_

from tailsampler.collector.config import DecisionCacheConfig
from tailsampler.common.verdict import Verdict

_TRACE_ID, _VERDICT = itemgetter(0), itemgetter(1)
_KEEP = attrgetter("keep")


Settled = tuple[bytes, Verdict]  # a trace ID and its verdict, as ``buffer.Settlement`` is


class _Verdicts:
    """One kind of verdict: trace ID -> (expiry, verdict), at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[bytes, tuple[float, Verdict]] = {}

    def found(self, trace_ids: Iterable[bytes], now: float) -> dict[bytes, Verdict]:
        entries = self._entries
        if entries.keys().isdisjoint(trace_ids):
            return {}
        out = {}
        for trace_id in entries.keys() & set(trace_ids):
            expires, verdict = entries.pop(trace_id)
            if expires > now:
                entries[trace_id] = (expires, verdict)  # read: to the end, as in an LRU
                out[trace_id] = verdict
        return out

    def put(self, settled: Sequence[Settled], expires: float) -> None:
        if self.size <= 0:
            return
        entries = self._entries
        entries.update(zip(map(_TRACE_ID, settled), zip(repeat(expires), map(_VERDICT, settled))))
        self._trim()

    def resize(self, size: int) -> None:
        """Hold at most ``size`` from now on; shrinking forgets the oldest."""
        self.size = size
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        over = len(entries) - max(0, self.size)
        if over > 0:
            deque(map(entries.__delitem__, list(islice(entries, over))), 0)


class DecisionCache:
    def __init__(self, config: DecisionCacheConfig) -> None:
        self.ttl = float(config.ttl)
        self._kept = _Verdicts(config.sampled_cache_size)
        self._dropped = _Verdicts(config.non_sampled_cache_size)

    def configure(self, config: DecisionCacheConfig) -> None:
        """New sizes and TTL (a live config change): entries kept keep the expiry they were given."""
        self.ttl = float(config.ttl)
        self._kept.resize(config.sampled_cache_size)
        self._dropped.resize(config.non_sampled_cache_size)

    def found(self, trace_ids: Sequence[bytes], now: float) -> dict[bytes, Verdict]:
        """The verdicts remembered for any of ``trace_ids``."""
        found = self._dropped.found(trace_ids, now)
        kept = self._kept.found(trace_ids, now)
        if kept:
            found.update(kept)
        return found

    def put(self, settled: Sequence[Settled], now: float) -> None:
        """Remember each (trace ID, verdict) until ``now`` + the TTL."""
        expires = now + self.ttl
        keeps = list(map(_KEEP, map(_VERDICT, settled)))
        kept = sum(keeps)
        if kept == len(keeps):
            self._kept.put(settled, expires)
        elif not kept:
            self._dropped.put(settled, expires)
        else:
            self._kept.put(list(compress(settled, keeps)), expires)
            self._dropped.put(list(compress(settled, map(not_, keeps))), expires)
