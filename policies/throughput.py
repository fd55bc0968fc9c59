"""``throughput``: keep up to ``traces_per_second`` traces, overall or spread across keys
(beyond the reference).

Without ``key_fields`` one token bucket holds the whole budget. With them, each key also has
its own bucket of ``traces_per_second / k``, where ``k`` is the number of keys seen in the last
``adjustment_interval``, so a flood of one key cannot starve the others; the overall bucket
still caps the total. Buckets come from ``PolicyContext.token_bucket``, so agents sharing Redis
share them; a per-key bucket's name includes ``k`` so a new spread starts fresh buckets.
Keys past ``max_keys`` share one bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import msgspec

from tailsampler.common.durations import Duration

from .base import Decision, TokenBucket
from .keys import KeyBuilder
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

_OVERFLOW_KEY = "\x00other"


class ThroughputConfig(msgspec.Struct, forbid_unknown_fields=True):
    traces_per_second: float = 0.0
    burst_capacity: float = 0.0
    key_fields: list[str] = msgspec.field(default_factory=list)
    status_class: bool = True
    adjustment_interval: Duration = Duration(10.0)
    max_keys: int = 1000


class ThroughputSpec(SpecBase, tag="throughput"):
    throughput: ThroughputConfig = msgspec.field(default_factory=ThroughputConfig)


@dataclass
class Throughput:
    name: str
    bucket_prefix: str
    rate: float
    burst: float
    keys: KeyBuilder | None
    interval: float
    max_keys: int
    clock: Callable[[], float]
    bucket_factory: Callable[[str, float, float], TokenBucket]
    overall: TokenBucket = field(init=False)
    spread: int = 1
    seen: set[str] = field(default_factory=set)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    next_adjustment: float | None = None

    def __post_init__(self) -> None:
        self.overall = self.bucket_factory(self.bucket_prefix, self.rate, self.burst)

    def _key_bucket(self, key: str) -> TokenBucket:
        now = self.clock()
        if self.next_adjustment is None:
            self.next_adjustment = now + self.interval
        elif now >= self.next_adjustment:
            spread = max(1, len(self.seen))
            if spread != self.spread:
                self.spread = spread
                self.buckets = {}
            self.seen = set()
            self.next_adjustment = now + self.interval
        if key not in self.seen and len(self.seen) >= self.max_keys:
            key = _OVERFLOW_KEY
        self.seen.add(key)
        bucket = self.buckets.get(key)
        if bucket is None:
            share = self.rate / self.spread
            bucket = self.buckets[key] = self.bucket_factory(
                f"{self.bucket_prefix}:{self.spread}:{key}", share, max(1.0, self.burst / self.spread)
            )
        return bucket

    def evaluate(self, trace: TraceView) -> Decision:
        if self.keys is not None and not self._key_bucket(self.keys.key(trace)).take(1):
            return Decision.NOT_SAMPLED
        return Decision.SAMPLED if self.overall.take(1) else Decision.NOT_SAMPLED


def build(spec: ThroughputSpec, path: str, builder: Builder) -> Throughput:
    cfg = spec.throughput
    base = f"{path}.throughput"
    if cfg.traces_per_second <= 0:
        raise invalid(f"{base}.traces_per_second", f"must be greater than 0, got {cfg.traces_per_second}")
    if cfg.burst_capacity < 0:
        raise invalid(f"{base}.burst_capacity", "must be 0 (one second of budget) or positive")
    if cfg.adjustment_interval <= 0:
        raise invalid(f"{base}.adjustment_interval", "must be greater than 0")
    if cfg.max_keys <= 0:
        raise invalid(f"{base}.max_keys", "must be greater than 0")
    keys = KeyBuilder(tuple(cfg.key_fields), cfg.status_class) if cfg.key_fields else None
    return Throughput(
        spec.name, f"{base}:{spec.name}", cfg.traces_per_second,
        cfg.burst_capacity or max(1.0, cfg.traces_per_second), keys,
        float(cfg.adjustment_interval), cfg.max_keys, builder.context.clock, builder.context.token_bucket,
    )


KINDS = (PolicyKind(ThroughputSpec, build),)
