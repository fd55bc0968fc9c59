"""``rate_limiting`` and ``bytes_limiting``: keep traces while a token bucket has budget.

As in the reference (``rate_limiting.go``, ``bytes_limiting.go``, both on golang.org/x/time/rate):
a trace costs its span count, or its protobuf size in bytes; ``burst_capacity`` defaults to twice
the rate. The bucket comes from ``PolicyContext.token_bucket`` so agents sharing a Redis buffer
share one budget, keyed by the policy's config path and name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import msgspec

from .base import Decision, TokenBucket
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class RateLimitingConfig(msgspec.Struct, forbid_unknown_fields=True):
    spans_per_second: int = 0
    burst_capacity: int = 0


class BytesLimitingConfig(msgspec.Struct, forbid_unknown_fields=True):
    bytes_per_second: int = 0
    burst_capacity: int = 0


class RateLimitingSpec(SpecBase, tag="rate_limiting"):
    rate_limiting: RateLimitingConfig = msgspec.field(default_factory=RateLimitingConfig)


class BytesLimitingSpec(SpecBase, tag="bytes_limiting"):
    bytes_limiting: BytesLimitingConfig = msgspec.field(default_factory=BytesLimitingConfig)


@dataclass
class TokenLimited:
    """Keeps a trace when the bucket can pay its cost; the probability of a keep is unknown."""

    name: str
    bucket: TokenBucket
    cost: Callable[[TraceView], int]

    def evaluate(self, trace: TraceView) -> Decision:
        if self.bucket.take(self.cost(trace)):
            return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def bucket_key(path: str, name: str) -> str:
    """Stable across agents that load the same config, unique per policy."""
    return f"{path}:{name}"


def limited(name: str, path: str, builder: Builder, key: str, rate: int, burst: int, cost: Callable[[TraceView], int]) -> TokenLimited:
    if rate <= 0:
        raise invalid(f"{path}.{key}", f"must be greater than 0, got {rate}")
    if burst < 0:
        raise invalid(f"{path}.burst_capacity", f"must be 0 (twice the rate) or positive, got {burst}")
    capacity = burst or 2 * rate
    return TokenLimited(name, builder.context.token_bucket(bucket_key(path, name), rate, capacity), cost)


def build_rate(spec: RateLimitingSpec, path: str, builder: Builder) -> TokenLimited:
    cfg = spec.rate_limiting
    return limited(
        spec.name, f"{path}.rate_limiting", builder, "spans_per_second",
        cfg.spans_per_second, cfg.burst_capacity, lambda trace: trace.span_count,
    )


def build_bytes(spec: BytesLimitingSpec, path: str, builder: Builder) -> TokenLimited:
    cfg = spec.bytes_limiting
    return limited(
        spec.name, f"{path}.bytes_limiting", builder, "bytes_per_second",
        cfg.bytes_per_second, cfg.burst_capacity, lambda trace: trace.byte_size,
    )


KINDS = (PolicyKind(RateLimitingSpec, build_rate), PolicyKind(BytesLimitingSpec, build_bytes))
