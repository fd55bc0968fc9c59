"""Fixtures that run real collectors: in process (fast, inspectable) or as ``tailsampler serve``
processes (for signals, crashes and several agents), plus waiting on conditions with deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import yaml

from tailsampler.collector.app import Collector
from tailsampler.collector.config import parse_config
from tailsampler.loadgen.processes import free_port, free_port_block
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


def collector_config(
    exporters: list[dict[str, Any]],
    tail_sampling: dict[str, Any] | None = None,
    buffer: dict[str, Any] | None = None,
    ports: bool = False,
    **sections: Any,
) -> dict[str, Any]:
    """A config dict on loopback; ``ports`` picks fixed free ports (a process must be told them),
    the admin port with three free ports after it for ``serve --workers``."""
    grpc, http, admin = (free_port(), free_port(), free_port_block(4)) if ports else (0, 0, 0)
    return {
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc}"}, "http": {"endpoint": f"127.0.0.1:{http}"}}},
        "tail_sampling": {
            "decision_wait": "1s",
            "policies": [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}],
            **(tail_sampling or {}),
        },
        "buffer": {"type": "memory", "tick": "50ms", **(buffer or {})},
        "exporters": exporters,
        "admin": {"endpoint": f"127.0.0.1:{admin}"},
        "service": {"shutdown_timeout": "10s"},
        **sections,
    }


StartCollector = Callable[[dict[str, Any]], Awaitable[Collector]]


@pytest.fixture
async def start_collector() -> AsyncIterator[StartCollector]:
    """Start in-process collectors from config dicts; each is stopped (drained) at teardown."""
    running: list[Collector] = []

    async def start(data: dict[str, Any]) -> Collector:
        collector = Collector(parse_config(yaml.safe_dump(data), "test-config.yaml"))
        await collector.start()
        running.append(collector)
        return collector

    yield start
    for collector in running:
        if not collector.stopped:
            await collector.stop()


class AgentProcess:
    """A ``python -m tailsampler.collector.cli serve`` process with its config's ports."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "agent.log"
        if "pipelines" in config.get("service", {}):  # an OpenTelemetry Collector config
            otlp = config["receivers"]["otlp"]["protocols"]
            self.admin_endpoint = config["service"]["telemetry"]["metrics"]["address"]
        else:
            otlp = config["receivers"]["otlp"]
            self.admin_endpoint = config["admin"]["endpoint"]
        self.grpc_endpoint = otlp["grpc"]["endpoint"]
        self.http_endpoint = otlp["http"]["endpoint"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> "AgentProcess":
        """Start ``serve`` and wait until it is ready; ``env`` adds to the environment."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tailsampler.collector.cli", "serve", "--config", str(self.config_path), *extra],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        wait_until(self.ready, timeout=30, message=f"agent ready on {self.admin_endpoint}", interval=0.1)
        return self

    def admin_get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.admin_endpoint}{path}", timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.admin_get("/health/ready")[0] == 200
        except OSError:
            return False

    def stats(self) -> dict[str, Any]:
        return self.admin_get("/api/v1/stats")[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], AgentProcess]]:
    """Create agent processes (not yet started) from config dicts; all are stopped at teardown."""
    agents: list[AgentProcess] = []

    def create(config: dict[str, Any]) -> AgentProcess:
        agent = AgentProcess(config, tmp_path / f"agent{len(agents)}")
        agents.append(agent)
        return agent

    yield create
    for agent in agents:
        agent.stop()
