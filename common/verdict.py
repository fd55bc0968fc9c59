"""The one decision value: a trace kept or dropped, by which policy, at what sample rate.

It travels unchanged from the policy engine through settling, the decision cache (in process or
as a Redis string), the late spans of a decided trace and forwarding, so a late span leaves with
exactly the sampling facts its trace's on-time spans carried.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    keep: bool
    policy: str | None  # the deciding policy; None when no policy sampled or dropped the trace
    sample_rate: float | None = None  # 1-in-N behind a keep, when the deciding policy knows it

    def encode(self) -> bytes:
        """``1`` or ``0``, the sample rate if known, then ``:policy`` if any: compact for the Redis
        decision keys, and its first byte alone says kept or dropped (the scripts read only that)."""
        rate = repr(self.sample_rate).encode() if self.sample_rate is not None else b""
        policy = b":" + self.policy.encode() if self.policy is not None else b""
        return (b"1" if self.keep else b"0") + rate + policy

    @classmethod
    def decode(cls, data: bytes) -> "Verdict":
        rate, _, policy = data[1:].partition(b":")
        return cls(data[:1] == b"1", policy.decode() if _ else None, float(rate) if rate else None)


DROPPED = Verdict(False, None)
"""The verdict of a trace no policy sampled, and of pending traces dropped at shutdown."""
