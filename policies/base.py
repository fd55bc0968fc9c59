"""The one interface every policy implements, and the vocabulary of decisions.

A policy looks at a whole trace and votes; the engine combines the votes the way the
OpenTelemetry Collector's tail_sampling processor does (drop beats sampled beats not sampled).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Protocol

from .trace import TraceView


class Decision(enum.Enum):
    NOT_SAMPLED = "not_sampled"
    SAMPLED = "sampled"
    DROPPED = "dropped"
    ERROR = "error"  # only the engine records it: a policy that fails raises

    # Members are singletons, so identity is equality; Enum's own hash is a Python call hashing
    # the member's name, and every decision's votes are counted by member
    __hash__ = object.__hash__


class Policy(Protocol):
    """A policy votes on a whole trace.

    A policy that keeps traces at a known rate (``probabilistic``, ``dynamic``) also has a
    ``sample_rate`` attribute: the 1-in-N rate behind its latest ``SAMPLED`` vote, which the
    engine copies into the ``Verdict`` so kept traces can carry it.
    """

    name: str

    def evaluate(self, trace: TraceView) -> Decision: ...


class PolicyError(Exception):
    """A policy could not judge a trace; the engine counts it as an ``ERROR`` vote and skips it.
    Any exception does the same; this one says the policy failed on purpose (a failing OTTL
    condition with ``error_mode: propagate``)."""


class TokenBucket(Protocol):
    """A budget that refills at a rate; shared across agents when the buffer is Redis."""

    def take(self, amount: float) -> bool: ...


class LocalTokenBucket:
    """A token bucket refilled from a monotonic clock; the single-agent default budget."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def take(self, amount: float) -> bool:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False


BucketFactory = Callable[[str, float, float], TokenBucket]


@dataclass
class PolicyContext:
    """What stateful policies need from their surroundings.

    ``clock`` is seconds on a monotonic scale (simulated time under ``tailsampler evaluate``);
    ``bucket(key, rate, capacity)`` returns the token bucket named ``key``, local by default and
    shared through Redis when agents share a buffer.
    """

    clock: Callable[[], float]
    bucket: BucketFactory | None = None

    def token_bucket(self, key: str, rate: float, capacity: float) -> TokenBucket:
        if self.bucket is not None:
            return self.bucket(key, rate, capacity)
        return LocalTokenBucket(rate, capacity, self.clock)
