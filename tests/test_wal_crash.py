"""SIGKILL a process that writes the log at random moments: whatever it acknowledged is recovered.

With every fsync setting a process crash must lose nothing acknowledged, because each
acknowledged record had reached the kernel. The child (``tests/wal_appender.py``) prints what it
is about to log and, once logged, that it would acknowledge it; after the kill, the log is
replayed and compared with those lines, then the next child carries on from the same directory.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer.wal import Recovered, WalConfig, open_wal

REPO = Path(__file__).resolve().parent.parent
CYCLES = 2
DONE_STATE = {"append": "pending", "decide": None, "deliver": "settled"}


class Expected:
    """Each trace's state as far as the child's acknowledgements go, and what its unanswered
    steps (in flight at the kill) may have added."""

    def __init__(self) -> None:
        self.spans: dict[bytes, int] = defaultdict(int)  # acknowledged spans of pending or kept traces
        self.extra: dict[bytes, int] = defaultdict(int)  # spans of appends in flight at the kill
        self.state: dict[bytes, str] = {}  # pending | kept | settled
        self.maybe: dict[bytes, set[str]] = defaultdict(set)

    def read(self, lines: list[str]) -> int:
        """Apply the child's lines; returns how many steps it acknowledged."""
        intents: dict[str, tuple[str, list[tuple[bytes, str]]]] = {}
        acknowledged = 0
        for line in lines:
            word, step, *rest = line.split()
            if word == "i":
                intents[step] = (rest[0], [(bytes.fromhex(t), v) for t, v in (item.split(":") for item in rest[1:])])
            elif word == "full":  # refused whole: nothing of it may appear
                del intents[step]
            elif word == "ok":
                acknowledged += 1
                action, items = intents.pop(step)
                for trace_id, value in items:
                    if action == "append":
                        self.spans[trace_id] += int(value)
                        self.state.setdefault(trace_id, "pending")
                    elif action == "decide":
                        self.state[trace_id] = "kept" if value == "k" else "settled"
                    else:
                        self.state[trace_id] = "settled"
        for action, items in intents.values():
            for trace_id, value in items:
                if action == "append":
                    self.extra[trace_id] += int(value)
                    self.maybe[trace_id].add("pending")
                else:
                    self.maybe[trace_id].add("kept" if action == "decide" and value == "k" else "settled")
        return acknowledged

    def check(self, recovered: Recovered, context: str) -> None:
        found = {**{t: "pending" for t in recovered.pending}, **{t: "kept" for t in recovered.kept}}
        for trace_id in found.keys() - self.state.keys() - self.maybe.keys():
            pytest.fail(f"{context}: trace {trace_id.hex()} recovered, but never logged")
        for trace_id in self.state.keys() | self.maybe.keys():
            actual = found.get(trace_id, "settled")
            allowed = {self.state.get(trace_id, "settled"), *self.maybe.get(trace_id, ())}
            assert actual in allowed, f"{context}: trace {trace_id.hex()} is {actual}, expected one of {allowed}"
            if actual != "settled":
                trace = (recovered.pending if actual == "pending" else recovered.kept)[trace_id]
                low, high = self.spans[trace_id], self.spans[trace_id] + self.extra[trace_id]
                assert low <= trace.span_count <= high, f"{context}: trace {trace_id.hex()}: {trace.span_count} spans"
                parsed = TracesData.FromString(trace.data)
                assert sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans) == trace.span_count

    def restart_from(self, recovered: Recovered) -> None:
        """What the log holds is what the next child starts from."""
        for trace_id in self.state.keys() | self.maybe.keys():
            self.state[trace_id] = "settled"
        self.spans.clear()
        for state, traces in (("pending", recovered.pending), ("kept", recovered.kept)):
            for trace_id, trace in traces.items():
                self.state[trace_id] = state
                self.spans[trace_id] = trace.span_count
        self.extra.clear()
        self.maybe.clear()


def run_until_killed(directory: Path, fsync: str, seed: int, lines_before_kill: int) -> list[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.wal_appender", str(directory), fsync, str(seed)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    lines: list[str] = []
    try:
        while len(lines) < lines_before_kill:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the appender exited early ({child.wait()}): {child.stderr.read()}")
            lines.append(line)
    finally:
        child.kill()
    child.wait()
    lines += child.stdout.read().splitlines(keepends=True)
    child.stdout.close()
    child.stderr.close()
    assert lines[0].startswith("open ")
    return [line for line in lines[1:] if line.endswith("\n")]  # a line cut by the kill says nothing


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_everything_acknowledged_survives_sigkill_at_random_moments(tmp_path: Path, fsync: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    expected = Expected()
    acknowledged = 0
    for cycle in range(CYCLES):
        kill_after = rng.randint(100, 800)
        lines = run_until_killed(tmp_path, fsync, rng.randrange(1 << 30), kill_after)
        acknowledged += expected.read(lines)
        wal, recovered = open_wal(WalConfig(dir=str(tmp_path), fsync="never"), CollectorRegistry())
        wal.close()
        context = f"seed {seed}, cycle {cycle}, killed after {kill_after} lines"
        assert recovered.corrupt_records == 0, context
        expected.check(recovered, context)
        expected.restart_from(recovered)
    assert acknowledged > CYCLES * 20
