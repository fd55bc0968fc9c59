"""``probabilistic``: keep a fixed share of traces, chosen by hashing the trace ID.

Same hash and threshold as the reference's ``probabilistic.go``, so a trace kept by an
OpenTelemetry Collector with the same salt is kept here: FNV-1a 64 over the salt's bytes then
the 16 trace-ID bytes, kept when ``hash <= threshold``; the threshold is
``(2^64 - 1) * (pct / 100)`` computed as Go's ``big.Float`` does (64-bit mantissa, round to
nearest even, then truncated to an unsigned integer, saturating).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import msgspec

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

DEFAULT_HASH_SALT = "default-hash-seed"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MAX_U64 = (1 << 64) - 1


def fnv1a_64(data: bytes, state: int = _FNV_OFFSET) -> int:
    for byte in data:
        state = ((state ^ byte) * _FNV_PRIME) & _MAX_U64
    return state


DEFAULT_SALT_STATE = fnv1a_64(DEFAULT_HASH_SALT.encode())


def threshold(percentage: float) -> int:
    exact = Fraction(_MAX_U64) * Fraction(percentage / 100)
    if exact < 1:
        return 0
    shift = int(exact).bit_length() - 64
    if shift > 0:
        exact = Fraction(round(exact / (1 << shift)) << shift)
    else:
        exact = Fraction(round(exact * (1 << -shift)), 1 << -shift)
    return min(int(exact), _MAX_U64)


class ProbabilisticConfig(msgspec.Struct, forbid_unknown_fields=True):
    hash_salt: str = ""
    sampling_percentage: float = 0.0


class ProbabilisticSpec(SpecBase, tag="probabilistic"):
    probabilistic: ProbabilisticConfig = msgspec.field(default_factory=ProbabilisticConfig)


@dataclass
class Probabilistic:
    name: str
    salt_state: int
    threshold: int
    sample_rate: float | None
    """1-in-N: the adjusted count of each kept trace (None when the percentage is 0)."""

    def evaluate(self, trace: TraceView) -> Decision:
        # the wire walk hashed the trace ID with the default salt already
        hashed = trace.probabilistic_hash if self.salt_state == DEFAULT_SALT_STATE else fnv1a_64(trace.trace_id, self.salt_state)
        if hashed <= self.threshold:
            return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: ProbabilisticSpec, path: str, builder: Builder) -> Probabilistic:
    cfg = spec.probabilistic
    pct = cfg.sampling_percentage
    if not 0 <= pct <= 100:
        raise invalid(f"{path}.probabilistic.sampling_percentage", f"must be between 0 and 100, got {pct}")
    salt = (cfg.hash_salt or DEFAULT_HASH_SALT).encode()
    rate = 100.0 / pct if pct > 0 else None
    return Probabilistic(spec.name, fnv1a_64(salt), threshold(pct), rate)


KINDS = (PolicyKind(ProbabilisticSpec, build),)
