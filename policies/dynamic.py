"""``dynamic``: per-key sampling toward a goal rate, so rare kinds of traces are kept more often
than common ones (beyond the reference; the EMA dynamic sampler of Honeycomb Refinery).

Every ``adjustment_interval`` the trace count of each key in the interval is folded into an
exponential moving average (``weight`` is the new interval's share); keys whose average falls
below ``age_out_value`` are forgotten. Rates are then spread so that the expected number kept
is ``total / goal_sample_rate``: each key gets a share of that goal proportional to the log of
its count, so a key seen 10x as often gets only a little more room, and unused room moves on to
busier keys. A key with no rate yet (unseen in the last interval) is kept at rate 1; keys past
``max_keys`` get the goal rate. The keep choice hashes the trace ID, so agents agree; the
policy's ``sample_rate`` is the rate used for the latest vote (kept traces can carry it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from tailsampler.common.durations import Duration

from .base import Decision
from .keys import KeyBuilder
from .probabilistic import fnv1a_64
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

_HASH_SPACE = float(1 << 64)
_SALT_STATE = fnv1a_64(b"tailsampler-dynamic")


class DynamicConfig(msgspec.Struct, forbid_unknown_fields=True):
    key_fields: list[str] = msgspec.field(default_factory=list)
    status_class: bool = True
    goal_sample_rate: float = 10.0
    adjustment_interval: Duration = Duration(15.0)
    weight: float = 0.5
    age_out_value: float = 0.5
    max_keys: int = 500


class DynamicSpec(SpecBase, tag="dynamic"):
    dynamic: DynamicConfig = msgspec.field(default_factory=DynamicConfig)


def spread_rates(goal_rate: float, averages: dict[str, float]) -> dict[str, float]:
    """Rates per key so that ``sum(count / rate) ~ sum(count) / goal_rate``, log-weighted."""
    total = sum(averages.values())
    log_sum = sum(math.log10(max(1.0, c)) for c in averages.values())
    if total <= 0:
        return {}
    goal_count = total / goal_rate
    if log_sum == 0:
        return {key: max(1.0, goal_rate) for key in averages}
    ratio = goal_count / log_sum
    rates: dict[str, float] = {}
    extra = 0.0
    remaining = len(averages)
    for key, count in sorted(averages.items(), key=lambda kv: (kv[1], kv[0])):
        count = max(1.0, count)
        goal = max(1.0, math.log10(count) * ratio)
        share = extra / remaining
        goal += share
        extra -= share
        remaining -= 1
        if count <= goal:
            rates[key] = 1.0
            extra += goal - count
        else:
            rate = math.ceil(count / goal)
            rates[key] = float(rate)
            extra += goal - count / rate
    return rates


@dataclass
class Dynamic:
    name: str
    keys: KeyBuilder
    goal_rate: float
    interval: float
    weight: float
    age_out: float
    max_keys: int
    clock: Callable[[], float]
    sample_rate: float = 1.0
    counts: dict[str, int] = field(default_factory=dict)
    averages: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    next_adjustment: float | None = None

    def _adjust(self) -> None:
        for key in self.averages.keys() | self.counts.keys():
            self.averages[key] = self.weight * self.counts.get(key, 0) + (1 - self.weight) * self.averages.get(key, 0.0)
        self.averages = {k: v for k, v in self.averages.items() if v >= self.age_out}
        self.counts = {}
        self.rates = spread_rates(self.goal_rate, self.averages)

    def rate_for(self, key: str) -> float:
        now = self.clock()
        if self.next_adjustment is None:
            self.next_adjustment = now + self.interval
        elif now >= self.next_adjustment:
            self._adjust()
            self.next_adjustment = now + self.interval
        if key in self.counts or len(self.counts) < self.max_keys:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.rates.get(key, 1.0)
        return self.goal_rate

    def evaluate(self, trace: TraceView) -> Decision:
        rate = self.rate_for(self.keys.key(trace))
        self.sample_rate = rate
        if fnv1a_64(trace.trace_id, _SALT_STATE) < _HASH_SPACE / rate:
            return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: DynamicSpec, path: str, builder: Builder) -> Dynamic:
    cfg = spec.dynamic
    base = f"{path}.dynamic"
    if not cfg.key_fields:
        raise invalid(f"{base}.key_fields", "expected at least one field, e.g. [service.name, http.route]")
    if cfg.goal_sample_rate < 1:
        raise invalid(f"{base}.goal_sample_rate", f"must be 1 or more (keep 1 in N), got {cfg.goal_sample_rate}")
    if cfg.adjustment_interval <= 0:
        raise invalid(f"{base}.adjustment_interval", "must be greater than 0")
    if not 0 < cfg.weight <= 1:
        raise invalid(f"{base}.weight", f"must be in (0, 1], got {cfg.weight}")
    if cfg.age_out_value < 0:
        raise invalid(f"{base}.age_out_value", "must be 0 or positive")
    if cfg.max_keys <= 0:
        raise invalid(f"{base}.max_keys", "must be greater than 0")
    return Dynamic(
        spec.name, KeyBuilder(tuple(cfg.key_fields), cfg.status_class), cfg.goal_sample_rate,
        float(cfg.adjustment_interval), cfg.weight, cfg.age_out_value, cfg.max_keys, builder.context.clock,
    )


KINDS = (PolicyKind(DynamicSpec, build),)
