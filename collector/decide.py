"""The decision loop: every tick, claim due traces, run the policy engine, export what is kept.

A kept trace is settled (removed from the buffer) only after every exporter has finished with
it, so an agent that dies before that leaves the trace claimed, another agent decides it again
after the lease, and the worst case is a duplicate delivery, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from itertools import chain

from tailsampler.collector.buffer import Claimed, Settlement, TraceBuffer
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.periodic import Periodic
from tailsampler.common.verdict import DROPPED, Verdict
from tailsampler.policies import Decision, Engine, TraceView

log = logging.getLogger(__name__)

# a trace that cannot be evaluated is kept, so that a bug or a bad byte costs storage rather than data
_EVALUATION_FAILED = Verdict(True, "evaluation_error")


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
        self._settling: set[asyncio.Task[None]] = set()
        # claims are kept on a task of their own: a round waiting on a full exporter queue must
        # not let the leases of the traces it holds run out
        self._renewal = Periodic("claim-renewal", tick, lambda: buffer.renew(time.time()))

    async def run(self) -> None:
        """Decide due traces until ``stop``; a failing round is logged and retried next tick."""
        await self._renewal.start()
        try:
            while not self._stopping.is_set():
                try:
                    claimed = await self._buffer.claim_due(time.time(), self._batch)
                    if claimed:
                        await self.decide(claimed)
                        if len(claimed) == self._batch:
                            continue
                except Exception:
                    log.exception("decision round failed; retrying next tick")
                try:  # wake on the next tick boundary, where the next slot of deadlines falls due
                    await asyncio.wait_for(self._stopping.wait(), self._tick - time.time() % self._tick)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._renewal.stop()

    def stop(self) -> None:
        self._stopping.set()

    def _evaluate(self, claimed: Claimed) -> tuple[Verdict, dict[str, Decision], int]:
        """The verdict, every policy's vote and the span count."""
        try:
            view = TraceView(claimed.trace_id, claimed.data)
            evaluation = self._engine.decide(view)
            return evaluation.verdict, evaluation.votes, view.span_count
        except Exception:
            log.exception("policy evaluation failed for trace %s; keeping it", claimed.trace_id.hex())
            self._metrics.decision_errors.inc()
            return _EVALUATION_FAILED, {}, 0

    async def decide(self, batch: list[Claimed]) -> None:
        """Decide a batch: dropped traces settle now, kept ones once every exporter has them."""
        dropped: list[Settlement] = []
        deliveries: list[tuple[Settlement, list[asyncio.Future[bool]]]] = []
        tally = _Tally()
        started = time.perf_counter()
        now = time.time()
        for claimed in batch:
            if claimed.due:
                self._metrics.decision_lag.observe(max(0.0, now - claimed.due))
            verdict, votes, span_count = self._evaluate(claimed)
            tally.add(claimed, verdict, votes, span_count)
            settlement = Settlement(claimed.trace_id, verdict)
            if verdict.keep:
                done = await self._forwarder.forward(claimed.trace_id, claimed.data, verdict, span_count, votes=votes)
                deliveries.append((settlement, done))
            else:
                dropped.append(settlement)
        tally.publish(self._metrics)
        self._metrics.decision_round_seconds.observe(time.perf_counter() - started)
        if dropped:
            await self._buffer.settle(dropped, time.time())
        if deliveries:
            task = asyncio.create_task(self._settle_delivered(deliveries))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle_delivered(self, deliveries: list[tuple[Settlement, list[asyncio.Future[bool]]]]) -> None:
        """Settle kept traces once delivered and forward what arrived meanwhile; a trace whose
        delivery shutdown cut short stays claimed, for another agent to decide after its lease."""
        try:
            await asyncio.gather(*(future for _, done in deliveries for future in done))
            finished = {s.trace_id: s for s, done in deliveries if all(f.result() for f in done)}
            stragglers = await self._buffer.settle(list(finished.values()), time.time())
            for trace_id, data in stragglers.items():
                await self._forwarder.forward(trace_id, data, finished[trace_id].verdict, late=True)
        except Exception:
            log.exception("settling %d delivered traces failed; they will be decided again", len(deliveries))

    async def settled(self) -> None:
        """Wait until every kept trace handed to the exporters has been settled."""
        while self._settling:
            await asyncio.gather(*self._settling)

    async def drain(self, drop: bool) -> int:
        """Decide (or, with ``drop``, discard) what stopping would lose; returns traces handled."""
        handled = 0
        while batch := await self._buffer.claim_due(time.time(), self._batch, draining=True):
            handled += len(batch)
            if drop:
                await self._buffer.settle([Settlement(c.trace_id, DROPPED) for c in batch], time.time())
            else:
                await self.decide(batch)
        return handled


class _Tally:
    """A batch's counts, added to the Prometheus counters once per batch rather than per trace."""

    def __init__(self) -> None:
        self.traces: Counter[tuple[str, str]] = Counter()
        self.spans: Counter[str] = Counter()
        self.votes: list[dict[str, Decision]] = []  # each trace's, counted once per batch
        self.early: Counter[str] = Counter()
        self.kept: list[tuple[bytes, int]] = []  # each kept trace's data and span count

    def add(self, claimed: Claimed, verdict: Verdict, votes: dict[str, Decision], span_count: int) -> None:
        decision = "kept" if verdict.keep else "dropped"
        self.traces[decision, verdict.policy or ""] += 1
        self.spans[decision] += span_count
        self.votes.append(votes)
        if verdict.keep:  # kept traces only: a small share, and the root service costs a parse
            self.kept.append((claimed.data, span_count))
        if claimed.reason != "deadline":
            self.early[claimed.reason] += 1

    def publish(self, metrics: Metrics) -> None:
        if self.kept:
            traces: Counter[str] = Counter()
            spans: Counter[str] = Counter()
            for data, span_count in self.kept:
                service = metrics.services.of_trace(data)
                traces[service] += 1
                spans[service] += span_count
            for service, count in traces.items():
                metrics.service_traces_kept.labels(service).inc(count)
                metrics.service_spans_kept.labels(service).inc(spans[service])
            metrics.kept_bytes.inc(sum(len(data) for data, _ in self.kept))
        for (decision, policy), count in self.traces.items():
            metrics.traces_decided.labels(decision, policy).inc(count)
        for decision, count in self.spans.items():
            metrics.spans_decided.labels(decision).inc(count)
        for (name, vote), count in Counter(chain.from_iterable(map(dict.items, self.votes))).items():
            metrics.policy_votes.labels(name, vote.value).inc(count)
        for reason, count in self.early.items():
            metrics.early_decisions.labels(reason).inc(count)
