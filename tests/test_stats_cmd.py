"""``tailsampler stats`` against real ``serve`` processes: the tables, ``--json``, and ``--watch``
on a terminal following a fleet of two agents on a real Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from opentelemetry.trace import Status, StatusCode

from tests.collectors import AgentProcess, collector_config
from tests.sdk import SdkClient, remote_parent
from tests.terminal import Terminal
from tests.waiting import wait_until

ERRORS = {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}


def stats_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tailsampler.collector.cli", "stats", *args]


def send(client: SdkClient, count: int, failing: Callable[[int], bool]) -> list[str]:
    traces = []
    for i in range(count):
        with client.tracer.start_as_current_span(f"POST /orders/{i}") as root:
            with client.tracer.start_as_current_span("INSERT orders") as child:
                if failing(i):
                    child.set_status(Status(StatusCode.ERROR))
        traces.append(f"{root.get_span_context().trace_id:032x}")
    client.flush()
    return traces


def decided(agents: list[AgentProcess], traces: int) -> bool:
    return sum(a.stats()["traces"]["kept"] + a.stats()["traces"]["dropped"] for a in agents) == traces


def test_stats_prints_tables_and_json(agent_process: Callable[[dict[str, Any]], AgentProcess], tmp_path: Path) -> None:
    agent = agent_process(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}], tail_sampling={"decision_wait": "300ms"}, ports=True,
    )).start()
    client = SdkClient("grpc", agent.grpc_endpoint, service="checkout")
    try:
        send(client, 10, failing=lambda i: i < 3)
    finally:
        client.shutdown()
    wait_until(lambda: decided([agent], 10), timeout=20, message="10 traces decided")

    printed = subprocess.run(stats_command("--admin", agent.admin_endpoint, "--by", "service"),
                             capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "160"})
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert any(re.search(r"traces kept\s+│\s+3\s+│.*│\s+3\s+│", line) for line in lines), printed.stdout
    assert any(re.search(r"keep percent\s+│\s+30\.0%", line) for line in lines), printed.stdout
    assert any(re.search(r"storage reduction\s+│\s+70\.0%", line) for line in lines), printed.stdout
    assert any(re.search(r"checkout\s+│\s+10\s+│\s+3\s+│\s+7\s+│\s+30\.0%", line) for line in lines), printed.stdout
    assert any("sqlite" in line and "closed" in line and "0/1000" in line for line in lines), printed.stdout

    as_json = subprocess.run(stats_command("--admin", agent.admin_endpoint, "--json", "--window", "1m"),
                             capture_output=True, text=True, timeout=30)
    answer = json.loads(as_json.stdout)
    assert answer["window"]["window_seconds"] == 60 and answer["window"]["traces"]["kept"] == 3

    unreachable = subprocess.run(stats_command("--admin", "127.0.0.1:9", "--window", "1m"),
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 1 and "cannot read http://127.0.0.1:9/api/v1/stats" in unreachable.stderr


def test_watch_follows_a_fleet_of_two_agents(
    agent_process: Callable[[dict[str, Any]], AgentProcess], clean_redis_url: str, tmp_path: Path
) -> None:
    buffer = {"type": "redis", "url": clean_redis_url, "tick": "50ms", "lease": "2s"}
    agents = [
        agent_process(collector_config(
            [{"type": "file", "path": str(tmp_path / f"kept{i}.jsonl")}],
            tail_sampling={"decision_wait": "500ms", "policies": [ERRORS]}, buffer=buffer, ports=True,
        )).start()
        for i in range(2)
    ]
    terminal = Terminal(stats_command("--admin", agents[0].admin_endpoint, "--watch", "--interval", "300ms",
                                      "--window", "5m", "--by", "service"), frame_starts="tailsampler at")
    clients = [SdkClient("grpc", agent.grpc_endpoint, service=f"svc{i}") for i, agent in enumerate(agents)]
    try:
        wait_until(lambda: terminal.shows(r"fleet of 2 agent\(s\)"), timeout=20, message="the fleet's two agents shown")
        first = send(clients[0], 6, failing=lambda i: i % 2 == 0)
        for trace_id in first:  # a span of each trace through the other agent too
            with clients[1].tracer.start_as_current_span("reserve stock", context=remote_parent(trace_id)):
                pass
        clients[1].flush()
        send(clients[1], 4, failing=lambda i: False)
        wait_until(lambda: decided(agents, 10), timeout=20, message="10 traces decided by the fleet")
        wait_until(lambda: terminal.shows(r"traces kept\s+│\s+3\s+│") and terminal.shows(r"traces dropped\s+│\s+7\s+│")
                   and terminal.shows(r"spans received\s+│\s+26\s+│"),
                   timeout=20, message="the watched tables catch up with the fleet")
        screen = terminal.read().rsplit(terminal.frame_starts, 1)[-1]
        assert re.search(r"svc0\s+│\s+6\s+│\s+3\s+│\s+3\s+│\s+50\.0%", screen), screen
        assert re.search(r"svc1\s+│\s+4\s+│\s+0\s+│\s+4\s+│\s+0\.0%", screen), screen
        for agent in agents:
            assert agent.admin_endpoint in screen, f"agent {agent.admin_endpoint} has a line of its own"
        terminal.process.send_signal(signal.SIGINT)
        assert terminal.process.wait(10) == 0, terminal.read()
    finally:
        for client in clients:
            client.shutdown()
        terminal.close()
