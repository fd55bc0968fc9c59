"""The decision loop: every tick, claim due traces, run the policy engine, export what is kept.

A kept trace is settled (removed from the buffer) only after every exporter has finished with
it, so an agent that dies before that leaves the trace claimed, another agent decides it again
after the lease, and the worst case is a duplicate delivery, never a loss. A buffer with a log
(memory with ``buffer.wal``) is told each round's verdicts before its kept traces go out, and
each kept trace's delivery once it and the spans that came in meanwhile are delivered; on start
the loop first delivers again what the previous run had not (``run(undelivered)``).

A live config change (``between_rounds``) is applied where one round has ended and the next has
not begun, so every trace of a round is decided by one set of policies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from typing import Callable

from tailsampler.collector.buffer import BufferUnavailable, Claimed, Settlement, TraceBuffer, Undelivered
from tailsampler.collector.deliveries import Deliveries
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.periodic import Periodic
from tailsampler.common.incident import Incident
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
        self.engine = engine  # replaced only between two rounds (``between_rounds``)
        self._forwarder = forwarder
        self._metrics = metrics
        self._tick = tick
        self._batch = batch
        self._stopping = asyncio.Event()
        self._settling: set[asyncio.Task[None]] = set()
        self._deliveries = Deliveries(buffer)  # of stragglers and of kept traces delivered again
        # claims are kept on a task of their own: a round waiting on a full exporter queue must
        # not let the leases of the traces it holds run out
        self._renewal = Periodic("claim-renewal", tick, lambda: buffer.renew(time.time()))
        self._changes: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        self._running = False
        # the traces of the round in progress while the loop is behind (their oldest deadline is
        # looked up only when asked: overload relief asks once a tick, the loop runs per trace)
        self._behind: list[Claimed] = []
        self._round_trouble = Incident(log, "decision round failed")
        self._settle_trouble = Incident(log, "settling delivered traces failed; they will be decided again")
        self._evaluation_trouble = Incident(log, "policy evaluation failed; such traces are kept")

    async def run(self, undelivered: Sequence[Undelivered] = ()) -> None:
        """Deliver again what a previous run left undelivered, then decide due traces until
        ``stop``; a failing round is retried next tick. A buffer whose store is away says so
        itself (``BufferUnavailable``), once, so that is not logged here."""
        await self._renewal.start()
        self._running = True
        try:
            if undelivered:
                await self._redeliver(undelivered)
            while not self._stopping.is_set():
                self._apply_changes()
                try:
                    claimed = self._behind = await self._buffer.claim_due(time.time(), self._batch)
                    if claimed:
                        await self.decide(claimed)
                    self._round_trouble.resolved()
                    if len(claimed) == self._batch:
                        continue
                    self._behind = []
                except BufferUnavailable as exc:
                    log.debug("decision round: %s", exc)
                except Exception as exc:
                    self._round_trouble.failed(f"{type(exc).__name__}: {exc}; retrying every tick", traceback=exc)
                try:  # wake on the next tick boundary, where the next slot of deadlines falls due
                    await asyncio.wait_for(self._stopping.wait(), self._tick - time.time() % self._tick)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._running = False
            self._apply_changes()
            await self._renewal.stop()

    def stop(self) -> None:
        self._stopping.set()

    def lag(self, now: float) -> float:
        """How far behind its deadlines the loop is now: 0 when it has caught up, and growing while a
        round that claimed overdue traces has not finished (an exporter queue full, say)."""
        oldest = min((c.due for c in self._behind if c.due), default=now)
        return max(0.0, now - oldest)

    async def between_rounds(self, change: Callable[[], None]) -> None:
        """Run ``change`` after the round in progress and before the next one, and return once it
        has run; with the loop not running, at once."""
        if not self._running:
            change()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes.append((change, done))
        await done

    def _apply_changes(self) -> None:
        changes, self._changes = self._changes, []
        for change, done in changes:
            try:
                change()
            except Exception as exc:  # a change that fails is the caller's error, not the loop's
                done.set_exception(exc)
            else:
                done.set_result(None)

    def _evaluate(self, claimed: Claimed) -> tuple[Verdict, dict[str, Decision], int]:
        """The verdict, every policy's vote and the span count."""
        try:
            view = TraceView(claimed.trace_id, claimed.data, claimed.facts)
            evaluation = self.engine.decide(view)
            return evaluation.verdict, evaluation.votes, view.span_count
        except Exception as exc:
            self._evaluation_trouble.failed(f"trace {claimed.trace_id.hex()}: {type(exc).__name__}: {exc}", traceback=exc)
            self._metrics.decision_errors.inc()
            return _EVALUATION_FAILED, {}, 0

    async def decide(self, batch: list[Claimed]) -> None:
        """Decide a batch: dropped traces settle now, kept ones once every exporter has them."""
        dropped: list[Settlement] = []
        kept: list[tuple[Claimed, Settlement, dict[str, Decision], int]] = []
        deliveries: list[tuple[Settlement, list[asyncio.Future[bool]]]] = []
        tally = _Tally()
        failures = self._evaluation_trouble.failures
        started = time.perf_counter()
        now = time.time()
        for claimed in batch:
            if claimed.due:
                self._metrics.decision_lag.observe(max(0.0, now - claimed.due))
            verdict, votes, span_count = self._evaluate(claimed)
            tally.add(claimed, verdict, votes, span_count)
            settlement = Settlement(claimed.trace_id, verdict)
            if verdict.keep:
                kept.append((claimed, settlement, votes, span_count))
            else:
                dropped.append(settlement)
        self._buffer.decided(dropped + [settlement for _, settlement, _, _ in kept], time.time())
        for claimed, settlement, votes, span_count in kept:
            done = await self._forwarder.forward(claimed.trace_id, claimed.data, settlement.verdict, span_count, votes=votes)
            deliveries.append((settlement, done))
        tally.publish(self._metrics)
        if self._evaluation_trouble.failures == failures:  # a round without a failed evaluation ends the incident
            self._evaluation_trouble.resolved()
        self._metrics.decision_round_seconds.observe(time.perf_counter() - started)
        if dropped:
            await self._buffer.settle(dropped, time.time())
        if deliveries:
            task = asyncio.create_task(self._settle_delivered(deliveries))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle_delivered(self, deliveries: list[tuple[Settlement, list[asyncio.Future[bool]]]]) -> None:
        """Settle kept traces once delivered and forward what arrived meanwhile; a trace whose
        delivery shutdown cut short stays claimed, for another agent to decide after its lease
        (or in the log, for the next start). A trace with stragglers is delivered once they are."""
        try:
            await asyncio.gather(*(future for _, done in deliveries for future in done))
            finished = {s.trace_id: s for s, done in deliveries if all(f.result() for f in done)}
            now = time.time()
            stragglers = await self._buffer.settle(list(finished.values()), now)
            self._buffer.delivered([s for trace_id, s in finished.items() if trace_id not in stragglers], now)
            late = []
            for trace_id, data in stragglers.items():
                settlement = finished[trace_id]
                late.append((settlement, await self._forwarder.forward(trace_id, data, settlement.verdict, late=True)))
            self._deliveries.watch(late)
            self._settle_trouble.resolved()
        except BufferUnavailable as exc:
            log.debug("settling %d delivered traces: %s", len(deliveries), exc)
        except Exception as exc:
            self._settle_trouble.failed(f"{len(deliveries)} traces: {type(exc).__name__}: {exc}", traceback=exc)

    async def _redeliver(self, undelivered: Sequence[Undelivered]) -> None:
        """Hand the exporters again the kept traces a previous run had not delivered everywhere
        (at-least-once: some may have reached a backend already)."""
        deliveries = []
        for trace in undelivered:
            done = await self._forwarder.forward(trace.trace_id, trace.data, trace.verdict, trace.span_count)
            deliveries.append((Settlement(trace.trace_id, trace.verdict), done))
        self._deliveries.watch(deliveries)

    async def settled(self) -> None:
        """Wait until every kept trace handed to the exporters has been settled."""
        while self._settling:
            await asyncio.gather(*self._settling)
        await self._deliveries.settled()

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
