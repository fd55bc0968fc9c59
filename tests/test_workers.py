"""``tailsampler serve --workers N``: several agent processes on one host sharing the ports."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tailsampler.storage import TraceStoreError, list_traces
from tests.collectors import REPO, collector_config
from tests.sdk import SdkClient
from tests.test_end_to_end import POLICIES, make_trace
from tests.waiting import wait_until


def processes_with(*words: str) -> list[int]:
    """PIDs whose command line holds every one of ``words``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if all(word.encode() in argv for word in words):
                found.append(int(entry.name))
    return found


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _stats(endpoint: str) -> Any:
    with urllib.request.urlopen(f"http://{endpoint}/api/v1/stats", timeout=5) as response:
        return json.load(response)


def test_workers_need_the_shared_buffer(tmp_path: Path) -> None:
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(collector_config([{"type": "sqlite", "path": str(tmp_path / "k.db")}], ports=True)))
    result = subprocess.run(
        [sys.executable, "-m", "tailsampler.collector.cli", "serve", "--config", str(path), "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "needs the shared redis buffer" in result.stderr


def test_workers_share_the_ports_and_stop_together(
    clean_redis_url: str, agent_process: Any, tmp_path: Path
) -> None:
    db = tmp_path / "kept.db"
    agent = agent_process(
        collector_config(
            [{"type": "sqlite", "path": str(db)}],
            tail_sampling={"decision_wait": "500ms", "policies": POLICIES},
            buffer={"type": "redis", "url": clean_redis_url, "key_prefix": "workers"},
            ports=True,
        )
    ).start("--workers", "2")
    workers = lambda: processes_with(str(agent.config_path), "--worker")  # noqa: E731
    wait_until(lambda: len(workers()) == 2, timeout=20, message="two worker processes")
    host, port = agent.admin_endpoint.rsplit(":", 1)
    second = f"{host}:{int(port) + 1}"  # worker 1 serves its admin API on the next port
    wait_until(lambda: _ready(second), timeout=20, message=f"worker 1 ready on {second}")

    client = SdkClient("grpc", agent.grpc_endpoint)
    errors = [make_trace(client, error=True) for _ in range(10)]
    for _ in range(10):
        make_trace(client)
    client.flush()
    client.shutdown()

    def stored() -> set[str]:
        try:
            return {row["trace_id"] for row in list_traces(str(db), limit=100)}
        except TraceStoreError:  # not created yet
            return set()

    wait_until(lambda: stored() == set(errors), timeout=20, message="the error traces stored")

    hashes = lambda: {_stats(e)["config"]["hash"] for e in (agent.admin_endpoint, second)}  # noqa: E731
    [before] = hashes()  # both workers run the one file, whatever their ports
    changed = copy.deepcopy(agent.config)
    changed["tail_sampling"]["policies"] = [{"name": "all", "type": "always_sample"}]
    agent.config_path.write_text(yaml.safe_dump(changed))
    agent.signal(signal.SIGHUP)  # the parent passes it to each worker, which reloads the file
    wait_until(lambda: len(hashes()) == 1 and hashes() != {before}, timeout=20, message="both workers reloaded")
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0, agent.log()
    wait_until(lambda: not workers(), timeout=10, message="every worker gone")
