"""An agent's use of the write-ahead log, on its own, for the crash tests to SIGKILL at any moment.

``python -m tests.wal_appender DIR FSYNC SEED`` opens the log in DIR, then appends requests,
decides traces and delivers kept ones, from a few concurrent tasks, for ever. Before each step it
prints what it is about to do (``i N append|decide|deliver trace:value ...``) and once the log
has answered, ``ok N``: an ``ok`` is the moment a receiver would acknowledge the request, so
whatever was acknowledged must survive the kill. A trace is appended to or decided by one task
at a time, and never appended to once decided.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer.wal import LoggedDecision, WalConfig, WalFull, open_wal
from tailsampler.common.durations import Duration
from tailsampler.common.sizes import ByteSize
from tests.otlp_data import fragments

KEEP = LoggedDecision(True, "errors", 0.5)
DROP = LoggedDecision(False, None, None)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(directory: str, fsync: str, seed: int) -> None:
    rng = random.Random(seed)
    config = WalConfig(dir=directory, fsync=fsync, fsync_interval=Duration(0.05), max_bytes=ByteSize(1024 * 1024))  # type: ignore[arg-type]
    wal, recovered = open_wal(config, CollectorRegistry())
    pending = {trace_id: trace.span_count for trace_id, trace in recovered.pending.items()}
    kept = set(recovered.kept)
    busy: set[bytes] = set()
    steps = iter(range(1, 1 << 62))
    say(f"open {len(pending)} {len(kept)}")

    async def append(step: int) -> None:
        idle = [t for t in pending if t not in busy]
        traces = {t: rng.randint(1, 3) for t in rng.sample(idle, min(len(idle), rng.randint(0, 2)))}
        traces.update({rng.randbytes(16): rng.randint(1, 6) for _ in range(rng.randint(1, 3))})
        body = {}
        for trace_id, spans in traces.items():
            body.update(fragments(trace_id, spans, root=rng.random() < 0.3))
        busy.update(traces)
        say(f"i {step} append " + " ".join(f"{t.hex()}:{n}" for t, n in traces.items()))
        try:
            await wal.append(body, time.time())
        except WalFull:
            say(f"full {step}")
            return
        finally:
            busy.difference_update(traces)
        for trace_id, spans in traces.items():
            pending[trace_id] = pending.get(trace_id, 0) + spans
        say(f"ok {step}")

    async def decide(step: int) -> None:
        idle = [t for t in pending if t not in busy]
        chosen = rng.sample(idle, min(len(idle), rng.randint(1, 8)))
        decisions = {t: KEEP if rng.random() < 0.3 else DROP for t in chosen}
        for trace_id in chosen:
            del pending[trace_id]
        say(f"i {step} decide " + " ".join(f"{t.hex()}:{'k' if d.keep else 'd'}" for t, d in decisions.items()))
        await wal.decided(decisions, time.time())
        kept.update(t for t, d in decisions.items() if d.keep)
        say(f"ok {step}")

    async def deliver(step: int) -> None:
        chosen = rng.sample(sorted(kept), min(len(kept), rng.randint(1, 4)))
        kept.difference_update(chosen)
        say(f"i {step} deliver " + " ".join(f"{t.hex()}:k" for t in chosen))
        await wal.delivered(dict.fromkeys(chosen, KEEP), time.time())
        say(f"ok {step}")

    async def work() -> None:
        while True:
            roll = rng.random()
            step = next(steps)
            if roll < 0.1 and kept:
                await deliver(step)
            elif roll < 0.35 and len(pending) > len(busy) or len(pending) > 400:
                await decide(step)
            else:
                await append(step)
            await asyncio.sleep(0)  # let the other tasks in: with fsync interval or never, nothing waits

    await asyncio.gather(*(work() for _ in range(4)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
