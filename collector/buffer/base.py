"""Where spans wait, and what agents sharing that place share beside it.

``TraceBuffer`` does buffering only: it takes fragments, hands out due traces, keeps the claims
of traces still being delivered, and records their verdicts. Two implementations (memory, redis)
pass one contract suite (``tests/test_buffer_contract.py``). It holds the decision cache, because
a late span must follow its trace's verdict wherever the buffer lives: in process for memory, in
Redis for agents that share one buffer.

``SharedState`` is the rest of what agents sharing a buffer share: the readiness of the store,
the rate-limiting budgets, and every agent's published counters. It has its own contract suite
(``tests/test_shared_state.py``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from tailsampler.collector.config import DecisionCacheConfig
from tailsampler.collector.wire import Fragment
from tailsampler.common.verdict import Verdict
from tailsampler.policies import TokenBucket


class BufferFull(Exception):
    """The buffer cannot take this request now; the client should retry after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class BufferUnavailable(Exception):
    """The buffer's backing store cannot be reached; ingest answers retryable errors."""


class Relief(Protocol):
    """Overload relief's verdicts for one request: a trace neither buffered nor decided is not
    buffered but decided at once with ``choose``'s verdict, recorded like any decision so its
    later spans follow it. ``choose`` answers one of ``kept``, ``kept_for_error`` (the fragment
    holds an error span) and ``dropped``; a trace that relief dropped earlier whose fragment here
    holds an error span is kept from now on (``kept_for_error``)."""

    kept: Verdict
    kept_for_error: Verdict
    dropped: Verdict

    def choose(self, trace_id: bytes, fragment: Fragment) -> Verdict: ...


@dataclass(slots=True)
class AppendResult:
    """What happened to a request's fragments beyond plain buffering.

    ``late_kept`` holds the verdicts of traces already kept: their fragments in this request go
    out now with that verdict. ``late_dropped_spans`` counts spans of traces already dropped
    (discarded); ``early`` counts traces pushed to an early decision because a bound was hit.
    Under overload relief, ``decided_now`` holds the traces decided at once instead of buffered
    (their fragments here are the whole trace so far), and ``rescued`` counts relief-dropped
    traces that an error span turned into kept ones (they are in ``late_kept``).
    """

    late_kept: dict[bytes, Verdict]
    late_dropped_spans: int = 0
    early: int = 0
    decided_now: dict[bytes, Verdict] = field(default_factory=dict)
    rescued: int = 0


@dataclass(slots=True)
class Claimed:
    """A due trace handed to one decider: its bytes (``TracesData``) and the facts record merged
    from its fragments' (``common/trace_facts.py``); ``reason`` is "deadline", "overflow", "size"
    or "shutdown".

    ``due`` is the wall-clock deadline the trace was claimed for (0 when unknown), so the
    decider can measure how late decisions are.
    """

    trace_id: bytes
    data: bytes
    facts: bytes
    reason: str = "deadline"
    due: float = 0.0


class Settlement(NamedTuple):
    """A claimed trace's verdict (a pair, so that a round's settlements go into a dict at once)."""

    trace_id: bytes
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A kept trace that a previous run of this agent had not delivered to every exporter."""

    trace_id: bytes
    data: bytes
    verdict: Verdict
    span_count: int


@dataclass(frozen=True, slots=True)
class Occupancy:
    traces: int
    bytes: int


class TraceBuffer(abc.ABC):
    """Holds fragments per trace until their deadline, then hands each trace to one decider."""

    shared = False  # True when several agents use this buffer at once

    async def open(self, now: float) -> list[Undelivered]:
        """Take back what a previous run of this agent left, once, before the first append: the
        memory buffer with a write-ahead log buffers its pending traces again at their original
        deadlines and returns the kept traces it had not delivered to every exporter, to deliver
        again. A shared buffer keeps everything where any agent finds it: nothing to take back."""
        return []

    @abc.abstractmethod
    async def append(self, fragments: dict[bytes, Fragment], now: float, relief: Relief | None = None) -> AppendResult:
        """Buffer fragments keyed by trace ID; raise BufferFull or BufferUnavailable to push back.

        ``now`` is wall-clock seconds. A request is taken whole or refused whole. With ``relief``
        (overload), traces not yet buffered or decided are decided at once instead.
        """

    @abc.abstractmethod
    async def claim_due(self, now: float, limit: int, *, draining: bool = False) -> list[Claimed]:
        """Take up to ``limit`` traces whose deadline has passed; each goes to exactly one caller.

        ``draining`` (shutdown): take instead the pending traces that would be lost when this
        agent stops, whatever their deadline (all of them in memory, none in a shared buffer,
        where another agent decides them at their deadline).
        """

    @abc.abstractmethod
    async def renew(self, now: float) -> None:
        """Keep this agent's claims on traces it has not settled yet (cheap to call every tick)."""

    @abc.abstractmethod
    async def settle(self, settlements: list[Settlement], now: float) -> dict[bytes, bytes]:
        """Record verdicts and free the traces; return bytes appended after they were claimed."""

    def decided(self, settlements: list[Settlement], now: float) -> None:
        """A round's verdicts, before its kept traces go to the exporters. A buffer with a log
        records them, so that after a restart a dropped trace stays dropped and a kept one is
        delivered again rather than decided again; elsewhere a no-op."""

    def delivered(self, settlements: list[Settlement], now: float) -> None:
        """Kept traces, or late spans of them, that every exporter has finished with (spans that
        arrived while the trace was decided included). A buffer with a log records that they need
        no delivery after a restart; elsewhere a no-op."""

    @abc.abstractmethod
    async def occupancy(self) -> Occupancy:
        """Traces and bytes currently buffered (cluster-wide for a shared buffer)."""

    @abc.abstractmethod
    def set_decision_cache(self, config: DecisionCacheConfig) -> None:
        """Remember verdicts with these sizes and TTL from now on (a live config change)."""

    async def close(self) -> None:
        """Release connections and hand back unsettled claims; buffered data stays where the
        implementation keeps it."""


class SharedState(abc.ABC):
    """What agents using one buffer share beside it: in process for memory, the same Redis for redis."""

    async def start(self) -> None:
        """Begin exchanging with the store (budgets); called once before use."""

    async def close(self) -> None:
        """Stop exchanging and release connections."""

    @abc.abstractmethod
    async def check(self) -> tuple[bool, str]:
        """Readiness of the backing store: (ready, detail)."""

    @abc.abstractmethod
    def bucket(self, key: str, rate: float, capacity: float) -> TokenBucket:
        """The token bucket named ``key`` for a rate-limiting policy, shared by every agent of
        the fleet (each policy asks once per key and keeps what it gets)."""

    @abc.abstractmethod
    async def publish(self, counters: dict[str, Any]) -> None:
        """Publish this agent's counters where the fleet can read them."""

    @abc.abstractmethod
    async def fleet(self) -> list[dict[str, Any]] | None:
        """Every live agent's last published counters; None when no other agent can share them."""
