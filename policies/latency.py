"""``latency``: keep traces that took long, measured from the earliest span start to the latest
span end (the reference's ``latency.go``: gaps between spans count, overlap does not).

Durations are compared in whole milliseconds, truncated, as the reference's
``Duration.Milliseconds()`` does: without ``upper_threshold_ms`` keep when ``d >= threshold_ms``;
with it keep when ``threshold_ms < d <= upper_threshold_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class LatencyConfig(msgspec.Struct, forbid_unknown_fields=True):
    threshold_ms: int = 0
    upper_threshold_ms: int = 0


class LatencySpec(SpecBase, tag="latency"):
    latency: LatencyConfig = msgspec.field(default_factory=LatencyConfig)


@dataclass
class Latency:
    name: str
    threshold_ms: int
    upper_threshold_ms: int

    def evaluate(self, trace: TraceView) -> Decision:
        if not trace.span_count:
            return Decision.NOT_SAMPLED
        duration_ms = trace.duration_ns // 1_000_000
        if self.upper_threshold_ms == 0:
            keep = duration_ms >= self.threshold_ms
        else:
            keep = self.threshold_ms < duration_ms <= self.upper_threshold_ms
        return Decision.SAMPLED if keep else Decision.NOT_SAMPLED


def build(spec: LatencySpec, path: str, builder: Builder) -> Latency:
    cfg = spec.latency
    if cfg.threshold_ms < 0:
        raise invalid(f"{path}.latency.threshold_ms", "must be 0 or positive")
    if cfg.upper_threshold_ms < 0:
        raise invalid(f"{path}.latency.upper_threshold_ms", "must be 0 (no upper bound) or positive")
    if cfg.upper_threshold_ms and cfg.upper_threshold_ms <= cfg.threshold_ms:
        raise invalid(
            f"{path}.latency.upper_threshold_ms",
            f"must be greater than threshold_ms ({cfg.threshold_ms}), got {cfg.upper_threshold_ms}",
        )
    return Latency(spec.name, cfg.threshold_ms, cfg.upper_threshold_ms)


KINDS = (PolicyKind(LatencySpec, build),)
