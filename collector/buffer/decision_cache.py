"""Kept and dropped verdicts remembered per trace, so late spans follow their trace's fate.

Two bounded LRUs (kept traces are rarer and matter more, so they get their own room) with a
TTL, in process; the Redis buffer keeps the same verdicts as keys with a TTL instead.
"""

from __future__ import annotations

from collections import OrderedDict

from tailsampler.collector.config import DecisionCacheConfig
from tailsampler.common.verdict import Verdict


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()

    def get(self, key: bytes, now: float) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, expires: float, verdict: Verdict) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (expires, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def resize(self, size: int) -> None:
        """Hold at most ``size`` from now on; shrinking forgets the least recently used."""
        self.size = size
        while len(self._entries) > max(0, size):
            self._entries.popitem(last=False)


class DecisionCache:
    def __init__(self, config: DecisionCacheConfig) -> None:
        self.ttl = float(config.ttl)
        self._kept = _Lru(config.sampled_cache_size)
        self._dropped = _Lru(config.non_sampled_cache_size)

    def configure(self, config: DecisionCacheConfig) -> None:
        """New sizes and TTL (a live config change): entries kept keep the expiry they were given."""
        self.ttl = float(config.ttl)
        self._kept.resize(config.sampled_cache_size)
        self._dropped.resize(config.non_sampled_cache_size)

    def get(self, trace_id: bytes, now: float) -> Verdict | None:
        return self._kept.get(trace_id, now) or self._dropped.get(trace_id, now)

    def put(self, trace_id: bytes, verdict: Verdict, now: float) -> None:
        (self._kept if verdict.keep else self._dropped).put(trace_id, now + self.ttl, verdict)
