"""The TraceBuffer interface: where spans wait, per trace, until their trace is decided.

Two implementations (memory, redis) pass one contract suite (``tests/test_buffer_contract.py``).
The buffer also holds the decision cache, because a late span must follow its trace's decision
wherever the buffer lives: in process for memory, in Redis for agents that share one buffer.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from tailsampler.collector.split import Fragment
from tailsampler.policies.base import BucketFactory


class BufferFull(Exception):
    """The buffer cannot take this request now; the client should retry after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class BufferUnavailable(Exception):
    """The buffer's backing store cannot be reached; ingest answers retryable errors."""


@dataclass(frozen=True, slots=True)
class CachedDecision:
    keep: bool
    policy: str | None


@dataclass(slots=True)
class AppendResult:
    """What happened to a request's fragments beyond plain buffering.

    ``late_kept`` holds fragments of traces already kept (forward them now); ``late_dropped_spans``
    counts spans of traces already dropped (discarded); ``early`` counts traces pushed to an
    early decision because a bound was hit.
    """

    late_kept: dict[bytes, bytes] = field(default_factory=dict)
    late_kept_policy: dict[bytes, str | None] = field(default_factory=dict)
    late_dropped_spans: int = 0
    early: int = 0


@dataclass(slots=True)
class Claimed:
    """A due trace handed to one decider; ``reason`` is "deadline", "overflow", "size" or "shutdown".

    ``due`` is the wall-clock deadline the trace was claimed for (0 when unknown), so the
    decider can measure how late decisions are.
    """

    trace_id: bytes
    data: bytes
    reason: str = "deadline"
    due: float = 0.0


@dataclass(frozen=True, slots=True)
class Settlement:
    trace_id: bytes
    keep: bool
    policy: str | None


@dataclass(frozen=True, slots=True)
class BufferStats:
    traces: int
    bytes: int


class TraceBuffer(abc.ABC):
    """Holds fragments per trace until their deadline, then hands each trace to one decider."""

    shared = False  # True when several agents use this buffer at once

    async def start(self) -> None:
        """Connect and prepare; called once before any other method."""

    async def close(self) -> None:
        """Release connections; buffered data stays where the implementation keeps it."""

    @abc.abstractmethod
    async def append(self, fragments: dict[bytes, Fragment], now: float) -> AppendResult:
        """Buffer fragments keyed by trace ID; raise BufferFull or BufferUnavailable to push back.

        ``now`` is wall-clock seconds. A request is taken whole or refused whole.
        """

    @abc.abstractmethod
    async def claim_due(self, now: float, limit: int) -> list[Claimed]:
        """Take up to ``limit`` traces whose deadline has passed; each goes to exactly one caller."""

    @abc.abstractmethod
    async def settle(self, settlements: list[Settlement], now: float) -> dict[bytes, bytes]:
        """Record decisions and free the traces; return bytes appended after they were claimed."""

    @abc.abstractmethod
    async def claim_all(self, limit: int) -> list[Claimed]:
        """Take pending traces regardless of deadline (shutdown drains the buffer this way)."""

    @abc.abstractmethod
    async def stats(self) -> BufferStats:
        """Traces and bytes currently buffered (cluster-wide for a shared buffer)."""

    async def check(self) -> tuple[bool, str]:
        """Readiness of the backing store: (ready, detail)."""
        return True, "ok"

    def bucket_factory(self) -> BucketFactory | None:
        """Token buckets for rate-limiting policies; None means each agent keeps its own."""
        return None

    async def share_stats(self, snapshot: bytes) -> None:
        """Publish this agent's counters where the fleet can read them (shared buffers only)."""

    async def fleet_stats(self) -> list[bytes] | None:
        """Every live agent's last published counters; None when the buffer is not shared."""
        return None
