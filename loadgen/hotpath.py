"""One stage of the collector's per-span work, run in-process on the benchmark's payloads.

The end-to-end benchmark measures whole processes on a 2-core machine whose timings swing by a
third between runs; a change to one stage needs a steadier yardstick. This runs a single stage
(upb's parse of the requests, which is all a null server does; the wire core's check and split
of the requests into per-trace fragments and their facts; the decision on the traces they make;
the whole pipeline behind a receiver: split, memory buffer, claim, decision and settling; or that
pipeline with the buffer's write-ahead log, ``fsync: interval``, in a temporary directory)
``repeat`` times after one warm-up pass, so that two runs differing only in
``repeat`` differ only in that stage's work. Under ``valgrind --tool=callgrind`` their
instruction counts repeat exactly: (count with ``--repeat 2`` − count with ``--repeat 0``) ÷ 2 ÷
spans is the stage's instructions per span.

``wire-c`` and ``wire-python`` run the wire core's split (``collector/wire.py``) on the C or the
pure-Python core; ``decide`` and ``pipeline`` run on the core that runs (``TAILSAMPLER_NO_EXTENSIONS=1``
picks the pure one). A stage named ``…-interleaved`` runs on the same requests with each scope's
spans dealt out trace by trace, as an SDK that batches concurrent requests sends them, instead of
each trace's spans side by side.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import MemoryTraceBuffer
from tailsampler.collector.config import BufferConfig, BufferLimits, Config, TailSamplingConfig
from tailsampler.collector.wal_config import WalConfig
from tailsampler.collector.decide import DecisionLoop
from tailsampler.collector.forward import Forwarder
from tailsampler.collector.ingest import Ingest
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.overload import OverloadRelief
from tailsampler.collector import wire
from tailsampler.collector.wire import WireSplit
from tailsampler.loadgen.layout import interleaved
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import example_policies
from tailsampler.loadgen.traffic import build_payloads
from tailsampler.policies import Engine, PolicyContext, PolicySpec, RecordingConfig, TraceView, build_engine

_LAYOUT_STAGES = ("parse", "wire-c", "wire-python", "decide", "pipeline", "wal")
STAGES = (*_LAYOUT_STAGES, *(f"{stage}-interleaved" for stage in _LAYOUT_STAGES))
_INTERLEAVED = "-interleaved"

def _wire_split(core: str) -> Callable[[bytes], WireSplit]:
    if core == "python":
        from tailsampler.collector.wire_py import split
    else:
        from tailsampler.collector._wire import split  # type: ignore[no-redef]
    return lambda body: WireSplit(*split(body))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StageResult:
    stage: str
    spans: int
    repeat: int
    cpu_us_per_span: float | None  # None with repeat 0


def _stage(stage: str, spans: int, seed: int) -> tuple[Callable[[], object], int]:
    """The stage's work over freshly built payloads, and how many spans one pass handles."""
    bodies = [p.data for p in build_payloads(TrafficShape(slow_threshold_s=1.0), spans, seed=seed)]
    if stage.endswith(_INTERLEAVED):
        bodies = list(map(interleaved, bodies))
        stage = stage.removesuffix(_INTERLEAVED)
    requests = [ExportTraceServiceRequest.FromString(body) for body in bodies]
    count = sum(len(ss.spans) for request in requests for rs in request.resource_spans for ss in rs.scope_spans)
    if stage == "parse":
        return lambda: [ExportTraceServiceRequest.FromString(body) for body in bodies], count
    if stage.startswith("wire-"):
        split = _wire_split(stage.removeprefix("wire-"))
        return lambda: [split(body) for body in bodies], count
    policies = msgspec.convert(example_policies(slow_threshold_ms=1000), list[PolicySpec])
    config = Config(tail_sampling=TailSamplingConfig(policies=policies), buffer=BufferConfig(max_bytes=1 << 40))
    engine = build_engine(config.tail_sampling, PolicyContext(clock=time.monotonic))
    if stage in ("pipeline", "wal"):
        return _pipeline(bodies, config, engine, logged=stage == "wal"), count
    fragments: dict[bytes, list[wire.Fragment]] = {}
    for body in bodies:
        for trace_id, fragment in wire.split(body).fragments.items():
            fragments.setdefault(trace_id, []).append(fragment)
    traces = [
        (trace_id, b"".join(f.data for f in parts), wire.merge_facts(b"".join(f.facts for f in parts)))
        for trace_id, parts in fragments.items()
    ]
    return lambda: [engine.decide(TraceView(*trace)) for trace in traces], count


def _pipeline(bodies: list[bytes], config: Config, engine: Engine, logged: bool) -> Callable[[], object]:
    """Every request through ``Ingest.accept`` into a fresh memory buffer (so that no decision
    is cached from an earlier pass), then every trace claimed as due, decided and settled; no
    exporter, no transport. With ``logged``, the buffer has a write-ahead log of its own."""
    forwarder = Forwarder([], RecordingConfig())
    metrics = Metrics()
    limits = BufferLimits.of(config)

    async def one_pass() -> None:
        directory = tempfile.mkdtemp(prefix="tailsampler-hotpath-wal-") if logged else None
        settings = msgspec.structs.replace(config.buffer, wal=WalConfig(dir=directory) if directory else None)
        buffer = MemoryTraceBuffer(limits, settings, CollectorRegistry())  # the log's metrics, once a pass
        await buffer.open(time.time())
        ingest = Ingest(buffer, forwarder, metrics, OverloadRelief(None, limits.max_traces, limits.max_bytes, metrics))
        decider = DecisionLoop(buffer, engine, forwarder, metrics, limits.tick)
        for body in bodies:
            await ingest.accept(body, "grpc")
        while claimed := await buffer.claim_due(time.time() + limits.decision_wait + limits.tick, 2000):
            await decider.decide(claimed)
        await decider.settled()
        await buffer.close()
        if directory is not None:
            shutil.rmtree(directory)
        if (left := await buffer.occupancy()).traces:  # a pass that skipped work would count too little
            raise RuntimeError(f"{left.traces} traces left undecided after a pass")

    return lambda: asyncio.run(one_pass())


def run_stage(stage: str, spans: int = 5_000, repeat: int = 2, seed: int = 7) -> StageResult:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}, expected one of {', '.join(STAGES)}")
    if repeat < 0 or spans < 1:
        raise ValueError("spans must be at least 1 and repeat at least 0")
    work, count = _stage(stage, spans, seed)
    work()  # warm-up: whatever is built on first use is built in every run, repeat 0 included
    started = time.process_time()
    for _ in range(repeat):
        work()
    elapsed = time.process_time() - started
    return StageResult(stage, count, repeat, elapsed / repeat / count * 1e6 if repeat else None)
