"""Kept and dropped decisions remembered per trace, so late spans follow their trace's fate.

Two bounded LRUs (kept traces are rarer and matter more, so they get their own room) with a
TTL, in process; the Redis buffer keeps the same facts as keys with a TTL instead.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import CachedDecision


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()

    def get(self, key: bytes, now: float) -> tuple[float, str | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, expires: float, policy: str | None) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (expires, policy)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class DecisionCache:
    def __init__(self, kept_size: int, dropped_size: int, ttl: float) -> None:
        self.ttl = ttl
        self._kept = _Lru(kept_size)
        self._dropped = _Lru(dropped_size)

    def get(self, trace_id: bytes, now: float) -> CachedDecision | None:
        entry = self._kept.get(trace_id, now)
        if entry is not None:
            return CachedDecision(True, entry[1])
        entry = self._dropped.get(trace_id, now)
        if entry is not None:
            return CachedDecision(False, entry[1])
        return None

    def put(self, trace_id: bytes, keep: bool, policy: str | None, now: float) -> None:
        (self._kept if keep else self._dropped).put(trace_id, now + self.ttl, policy)
