"""The decision loop: every tick, claim due traces, run the policy engine, export what is kept.

Kept traces are handed to the exporters before the buffer settles them, so an agent that dies
in between leaves the trace claimed, another agent decides it again after the lease, and the
worst case is a duplicate delivery, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import time

from collector.buffer import Claimed, Settlement, TraceBuffer
from collector.forward import Forwarder
from collector.metrics import Metrics
from policies import Engine, TraceView, Verdict

log = logging.getLogger(__name__)

_ERROR_POLICY = "evaluation_error"


class DecisionLoop:
    def __init__(
        self,
        buffer: TraceBuffer,
        engine: Engine,
        forwarder: Forwarder,
        metrics: Metrics,
        tick: float,
        batch: int = 2000,
    ) -> None:
        self._buffer = buffer
        self._engine = engine
        self._forwarder = forwarder
        self._metrics = metrics
        self._tick = tick
        self._batch = batch
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Decide due traces until ``stop``; a failing round is logged and retried next tick."""
        while not self._stopping.is_set():
            try:
                claimed = await self._buffer.claim_due(time.time(), self._batch)
                if claimed:
                    await self.decide(claimed)
                    if len(claimed) == self._batch:
                        continue
            except Exception:
                log.exception("decision round failed; retrying next tick")
            try:
                await asyncio.wait_for(self._stopping.wait(), self._tick)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()

    def _verdict(self, claimed: Claimed) -> tuple[Verdict, int]:
        view = TraceView(claimed.trace_id, claimed.data)
        started = time.perf_counter()
        try:
            verdict = self._engine.decide(view)
        except Exception:
            log.exception("policy evaluation failed for trace %s; keeping it", claimed.trace_id.hex())
            self._metrics.decision_errors.inc()
            verdict = Verdict(True, _ERROR_POLICY)
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return verdict, view.span_count

    async def decide(self, batch: list[Claimed]) -> None:
        metrics = self._metrics
        settlements: list[Settlement] = []
        kept: dict[bytes, Verdict] = {}
        now = time.time()
        for claimed in batch:
            if claimed.due:
                metrics.decision_lag.observe(max(0.0, now - claimed.due))
            verdict, span_count = self._verdict(claimed)
            decision = "kept" if verdict.keep else "dropped"
            policy = verdict.policy or ""
            metrics.traces_decided.labels(decision, policy).inc()
            metrics.spans_decided.labels(decision).inc(span_count)
            for name, vote in verdict.votes.items():
                metrics.policy_votes.labels(name, vote.value).inc()
            if claimed.reason != "deadline":
                metrics.early_decisions.labels(claimed.reason).inc()
            if verdict.keep:
                kept[claimed.trace_id] = verdict
                await self._forwarder.forward(claimed.trace_id, claimed.data, verdict, span_count)
            settlements.append(Settlement(claimed.trace_id, verdict.keep, verdict.policy))
        stragglers = await self._buffer.settle(settlements, time.time())
        for trace_id, data in stragglers.items():
            if trace_id in kept:
                await self._forwarder.forward(trace_id, data, kept[trace_id], late=True)

    async def drain(self, drop: bool) -> int:
        """Decide (or, with ``drop``, discard) everything still buffered; returns traces handled."""
        handled = 0
        while batch := await self._buffer.claim_all(self._batch):
            handled += len(batch)
            if drop:
                await self._buffer.settle([Settlement(c.trace_id, False, None) for c in batch], time.time())
            else:
                await self.decide(batch)
        return handled
