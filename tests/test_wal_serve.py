"""``tailsampler serve`` with a write-ahead log, SIGKILLed at random moments under SDK traffic and
started again on the same directory: every accepted span of every kept trace reaches the
downstream receiver, no dropped trace does, the buffer drains and duplicates are accounted for;
and a log with a torn tail or a flipped byte starts cleanly.

The SDK sends over OTLP/HTTP from a thread, one request per call, and notes which requests the
agent acknowledged and when each call began and ended; the test kills the agent (after a random
number of acknowledged requests, or from the receiver as a random batch of kept traces arrives)
and starts it again. A trace with an error span is kept, any other dropped, so a trace decided
again after a restart is decided the same way.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tailsampler.collector.buffer.wal_format import SEGMENT_HEADER, scan
from tests.collectors import AgentProcess, collector_config
from tests.otlp_sink import GrpcSink
from tests.sdk import SdkClient, remote_parent
from tests.waiting import eventually

ERRORS = [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}]
TRACES_PER_REQUEST = 4
CYCLES = 3


class Receiver(GrpcSink):
    """The downstream OTLP receiver: counts every span it is given, by trace, and can SIGKILL an
    agent the moment the ``kill_at``-th export request reaches it (before answering it)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: dict[str, Counter[bytes]] = {}
        self.kill_at = 0
        self.victim: AgentProcess | None = None
        self.kills: list[float] = []

    def _next_failure(self, body: bytes, headers: dict[str, str]) -> Any:
        failure = super()._next_failure(body, headers)
        if failure is None:
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.setdefault(span.trace_id.hex(), Counter())[span.span_id] += 1
            if self.kill_at and len(self.requests) >= self.kill_at and self.victim is not None:
                self.kill_at = 0
                assert self.victim.process is not None
                self.victim.process.kill()
                self.kills.append(time.monotonic())
        return failure


@dataclass
class Sent:
    """One export call: the spans in it by trace, whether the agent acknowledged it, and when."""

    spans: dict[str, list[bytes]]
    errors: set[str]
    started: float
    ended: float = 0.0
    ok: bool = False


@dataclass
class Sender:
    """SDK traffic from a thread: requests of four new traces (a root and two children; every
    third trace has an error span), and now and then a late error span of an earlier trace."""

    endpoint: str
    seed: int
    sent: list[Sent] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = SdkClient("http", self.endpoint, batch=False, timeout=5)
        self.rng = random.Random(self.seed)
        self.thread = threading.Thread(target=self._run, name="sdk-sender", daemon=True)

    @property
    def acknowledged(self) -> int:
        return sum(1 for s in self.sent if s.ok)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.client.shutdown()

    def _run(self) -> None:
        tracer, n = self.client.tracer, 0
        earlier: list[str] = []
        while not self.stopping.is_set():
            spans: dict[str, list[bytes]] = {}
            errors: set[str] = set()
            if earlier and self.rng.random() < 0.2:
                trace_id = self.rng.choice(earlier)
                with tracer.start_as_current_span("late retry", context=remote_parent(trace_id)) as late:
                    late.set_status(Status(StatusCode.ERROR, "late"))
                spans[trace_id] = [late.get_span_context().span_id.to_bytes(8, "big")]
                errors.add(trace_id)
            for _ in range(TRACES_PER_REQUEST):
                n += 1
                error = n % 3 == 0
                ids = []
                with tracer.start_as_current_span("GET /cart") as root:
                    for child in range(2):
                        with tracer.start_as_current_span(f"db {child}") as span:
                            if error and child == 1:
                                span.set_status(Status(StatusCode.ERROR, "boom"))
                        ids.append(span.get_span_context().span_id.to_bytes(8, "big"))
                ids.append(root.get_span_context().span_id.to_bytes(8, "big"))
                trace_id = f"{root.get_span_context().trace_id:032x}"
                spans[trace_id] = ids
                if error:
                    errors.add(trace_id)
                    earlier.append(trace_id)
            record = Sent(spans, errors, time.monotonic())
            record.ok = self.client.send_now()
            record.ended = time.monotonic()
            self.sent.append(record)
            time.sleep(0.01)  # pacing: about 50 requests a second


@dataclass
class Expected:
    kept: dict[str, set[bytes]]  # acknowledged spans of traces with an error span acknowledged
    dropped: set[str]  # traces no error span of which was ever sent
    ambiguous: set[str]  # traces in a call under way at a kill: the SDK may have sent it twice


def expected(sent: list[Sent], kills: list[float]) -> Expected:
    every: set[str] = set()
    ever_error: set[str] = set()
    acknowledged_error: set[str] = set()
    ambiguous: set[str] = set()
    for record in sent:
        every |= record.spans.keys()
        ever_error |= record.errors
        if record.ok:
            acknowledged_error |= record.errors
        if any(record.started <= kill <= record.ended for kill in kills):
            ambiguous |= record.spans.keys()
    kept: dict[str, set[bytes]] = {}
    for record in sent:
        if record.ok:
            for trace_id, ids in record.spans.items():
                if trace_id in acknowledged_error:
                    kept.setdefault(trace_id, set()).update(ids)
    return Expected(kept, every - ever_error, ambiguous)


def metrics(agent: AgentProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{agent.admin_endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def replayed(agent: AgentProcess, state: str, what: str = "traces") -> float:
    return metrics(agent).get((f"tailsampler_wal_replayed_{what}_total", (("state", state),)), 0.0)


def config(receiver: Receiver, wal: Path, fsync: str, decision_wait: str = "500ms") -> dict[str, Any]:
    exporter = {
        "type": "otlp", "endpoint": receiver.endpoint, "insecure": True,
        "retry_on_failure": {"initial_interval": "50ms", "max_interval": "200ms", "max_elapsed_time": "0s"},
        "circuit_breaker": {"cooldown": "200ms"},
    }
    data = collector_config(
        [exporter], {"decision_wait": decision_wait, "policies": ERRORS},
        {"wal": {"dir": str(wal), "fsync": fsync, "fsync_interval": "200ms"}}, ports=True,
    )
    data["service"]["shutdown_timeout"] = "5s"
    return data


@pytest.fixture
async def receiver() -> Any:
    sink = Receiver()
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


class Run:
    """An agent on one WAL directory, started again after every kill; sums what each start replayed."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.kills: list[float] = []
        self.replayed_kept = 0.0
        self.starts = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.agent.start)
        self.starts += 1
        self.replayed_kept += await asyncio.to_thread(replayed, self.agent, "kept")

    async def kill(self) -> None:
        assert self.agent.process is not None
        self.agent.process.kill()
        self.kills.append(time.monotonic())
        await asyncio.to_thread(self.agent.process.wait)

    async def drained(self) -> bool:
        return (await asyncio.to_thread(self.agent.stats))["buffer"]["traces"] == 0

    async def value(self, read: Callable[[AgentProcess], float]) -> float:
        return await asyncio.to_thread(read, self.agent)


async def settle_and_check(run: Run, receiver: Receiver, sender: Sender, context: str) -> tuple[int, int]:
    """Wait for every acknowledged span of every kept trace at the receiver and an empty buffer;
    check nothing of a dropped trace arrived; stop cleanly and start once more: nothing is left
    in the log. Returns (traces delivered with duplicate spans, kept traces replayed)."""
    await asyncio.to_thread(sender.stop)
    want = expected(sender.sent, run.kills + receiver.kills)
    assert len(want.kept) > 10 and len(want.dropped) > 20, f"{context}: too little traffic to say anything"

    def missing() -> dict[str, set[bytes]]:
        gaps = {t: ids - receiver.spans.get(t, Counter()).keys() for t, ids in want.kept.items()}
        return {t: ids for t, ids in gaps.items() if ids}

    try:
        await eventually(lambda: not missing(), 60)
    except AssertionError:
        lost = missing()
        pytest.fail(f"{context}: {sum(map(len, lost.values()))} acknowledged span(s) of {len(lost)} kept trace(s) never arrived")
    await eventually(run.drained, 60, f"{context}: the buffer drained")
    delivered_dropped = want.dropped & receiver.spans.keys()
    assert not delivered_dropped, f"{context}: {len(delivered_dropped)} dropped trace(s) delivered"
    duplicated = {t for t, counts in receiver.spans.items() if max(counts.values()) > 1}
    assert len(duplicated - want.ambiguous) <= run.replayed_kept, (
        f"{context}: {len(duplicated)} trace(s) delivered with duplicate spans, {len(want.ambiguous)} in calls cut by "
        f"a kill, {run.replayed_kept} kept traces delivered again after a restart"
    )
    run.agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(run.agent.wait, 30) == 0, run.agent.log()
    await asyncio.to_thread(run.agent.start)
    left = (await asyncio.to_thread(replayed, run.agent, "pending"), await asyncio.to_thread(replayed, run.agent, "kept"))
    assert left == (0, 0), f"{context}: (pending, kept) traces left in the log after a clean stop"
    return len(duplicated), int(run.replayed_kept)


@pytest.mark.parametrize(
    ("moment", "fsync"),
    [("ingest", "interval"), ("ingest", "always"), ("delivery", "interval"), ("exporter_down", "never")],
)
async def test_sigkill_loses_nothing_accepted(
    agent_process: Callable[[dict[str, Any]], AgentProcess], receiver: Receiver, tmp_path: Path, moment: str, fsync: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run = Run(agent_process(config(receiver, tmp_path / "wal", fsync)))
    receiver.victim = run.agent
    await run.start()
    sender = Sender(run.agent.http_endpoint, seed)
    sender.start()
    try:
        for _ in range(CYCLES):
            target = sender.acknowledged + rng.randint(5, 40)
            await eventually(lambda: sender.acknowledged >= target, 60, f"seed {seed}: {target} requests acknowledged")
            if moment == "delivery":  # kill as a batch of kept traces reaches the receiver, before it is answered
                kills = len(receiver.kills)
                receiver.kill_at = len(receiver.requests) + rng.randint(1, 4)
                await eventually(lambda: len(receiver.kills) > kills, 60, f"seed {seed}: killed during a delivery")
                await asyncio.to_thread(run.agent.process.wait)  # type: ignore[union-attr]
            elif moment == "exporter_down":  # kill while kept traces wait for a receiver that refuses them
                receiver.fail("UNAVAILABLE", times=10**6)
                before = await run.value(_kept)
                more = rng.randint(2, 10)

                async def queued() -> bool:
                    return await run.value(_kept) >= before + more

                await eventually(queued, 60, f"seed {seed}: kept traces decided while the receiver refuses them")
                await run.kill()
                receiver.failures.clear()
            else:
                await run.kill()
            await run.start()
        duplicated, replayed_kept = await settle_and_check(run, receiver, sender, f"seed {seed}")
    finally:
        sender.stopping.set()
    if moment in ("delivery", "exporter_down"):
        assert replayed_kept >= 1, f"seed {seed}: a kill with kept traces undelivered replayed none"
    if moment == "delivery":
        assert duplicated >= 1, f"seed {seed}: a batch delivered but not acknowledged came back as a duplicate"
    samples = await asyncio.to_thread(metrics, run.agent)
    assert samples[("tailsampler_wal_segments", ())] >= 1 and samples[("tailsampler_wal_bytes", ())] >= SEGMENT_HEADER
    if fsync != "never":
        await eventually(lambda: run.value(_flushes), 10, "the log flushed")


def _flushes(agent: AgentProcess) -> float:
    return metrics(agent).get(("tailsampler_wal_fsync_seconds_count", ()), 0.0)


def _kept(agent: AgentProcess) -> float:
    """Kept traces decided: with the receiver refusing, they wait in the exporter."""
    return sum(
        v for (name, labels), v in metrics(agent).items()
        if name == "tailsampler_traces_decided_total" and ("decision", "kept") in labels
    )


def send_traces(client: SdkClient, count: int, error: bool = True) -> list[str]:
    """``count`` acknowledged requests of one three-span trace each; their trace IDs in order."""
    sent = []
    for _ in range(count):
        with client.tracer.start_as_current_span("GET /cart") as root:
            for child in range(2):
                with client.tracer.start_as_current_span(f"db {child}") as span:
                    if error:
                        span.set_status(Status(StatusCode.ERROR, "boom"))
        assert client.send_now(), "the agent refused a request"
        sent.append(f"{root.get_span_context().trace_id:032x}")
    return sent


@pytest.mark.parametrize("damage", ["torn tail", "flipped byte"])
async def test_a_damaged_log_starts_cleanly_and_delivers_what_is_intact(
    agent_process: Callable[[dict[str, Any]], AgentProcess], receiver: Receiver, tmp_path: Path, damage: str
) -> None:
    wal = tmp_path / "wal"
    data = config(receiver, wal, "interval", decision_wait="60s")  # nothing is decided before the kill
    agent = agent_process(data)
    await asyncio.to_thread(agent.start)
    client = SdkClient("http", agent.http_endpoint, batch=False, timeout=5)
    traces = await asyncio.to_thread(send_traces, client, 6)
    assert agent.process is not None
    agent.process.kill()
    await asyncio.to_thread(agent.process.wait)

    [segment] = [p for p in wal.iterdir() if p.suffix == ".wal" and p.stat().st_size > SEGMENT_HEADER]
    raw = bytearray(segment.read_bytes())
    records = scan(bytes(raw)).records
    assert len(records) == len(traces), "one record per request"
    if damage == "torn tail":  # the last request half written: as a machine crash can leave it
        lost, (_, start, end) = traces[-1], records[-1]
        segment.write_bytes(bytes(raw[: start + (end - start) // 2]))
    else:  # one bit flipped in a request between two intact ones
        lost, (_, start, end) = traces[2], records[2]
        raw[start + (end - start) // 2] ^= 0x10
        segment.write_bytes(bytes(raw))

    data["tail_sampling"]["decision_wait"] = "200ms"  # the traces' deadlines have passed: decided at once
    agent.config_path.write_text(yaml.safe_dump(data))
    await asyncio.to_thread(agent.start)
    intact = [t for t in traces if t != lost]
    await eventually(lambda: all(len(receiver.spans.get(t, ())) == 3 for t in intact), 30, "the intact traces delivered")
    await eventually(Run(agent).drained, 30, "the buffer drained")
    assert lost not in receiver.spans
    samples = await asyncio.to_thread(metrics, agent)
    assert samples[("tailsampler_wal_replayed_traces_total", (("state", "pending"),))] == len(intact)
    assert samples[("tailsampler_wal_replayed_spans_total", (("state", "pending"),))] == 3 * len(intact)
    if damage == "torn tail":
        assert samples[("tailsampler_wal_torn_bytes_total", ())] == (end - start) // 2  # what was left of it
        assert "torn or damaged, cutting them off" in agent.log()
    else:
        assert samples[("tailsampler_wal_corrupt_records_total", ())] == 1
        assert "skipped 1 damaged record" in agent.log()
    client.shutdown()


async def test_sigterm_with_the_receiver_down_leaves_kept_and_pending_traces_for_the_next_start(
    agent_process: Callable[[dict[str, Any]], AgentProcess], receiver: Receiver, tmp_path: Path
) -> None:
    data = config(receiver, tmp_path / "wal", "interval", decision_wait="2s")
    data["service"]["shutdown_timeout"] = "2s"
    agent = agent_process(data)
    await asyncio.to_thread(agent.start)
    receiver.fail("UNAVAILABLE", times=10**6)
    client = SdkClient("http", agent.http_endpoint, batch=False, timeout=5)
    kept = await asyncio.to_thread(send_traces, client, 5)
    await eventually(lambda: asyncio.to_thread(lambda: _kept(agent) >= 5), 30, "every kept trace decided, none delivered")
    pending = await asyncio.to_thread(send_traces, client, 3)  # within decision_wait of the SIGTERM
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.wait, 30) == 0, agent.log()
    assert time.monotonic() - started < 2 + 3, "shutdown outlived shutdown_timeout"
    assert "stay in the write-ahead log for the next start" in agent.log()
    assert not receiver.spans

    receiver.failures.clear()
    await asyncio.to_thread(agent.start)
    await eventually(lambda: all(len(receiver.spans.get(t, ())) == 3 for t in kept + pending), 30, "all delivered")
    assert await asyncio.to_thread(replayed, agent, "kept") >= 1
    client.shutdown()
