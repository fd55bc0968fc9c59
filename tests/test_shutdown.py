"""Shutdown always ends within ``service.shutdown_timeout``, even when an exporter's backend
takes nothing and its queue is full, and says what it could not deliver."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.collectors import collector_config
from tests.sdk import SdkClient
from tests.waiting import wait_until

ALWAYS = [{"name": "all", "type": "always_sample"}]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a backend that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _metric(agent: Any, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{agent.admin_endpoint}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_full_queue_to_a_dead_backend_does_not_hold_shutdown(
    agent_process: Any, blackhole: str, tmp_path: Path, signum: int
) -> None:
    exporter = {"type": "otlp", "endpoint": blackhole, "insecure": True, "queue_size": 2, "batch_max_traces": 1, "timeout": "60s"}
    config = collector_config([exporter], {"decision_wait": "100ms", "policies": ALWAYS}, ports=True)
    config["service"]["shutdown_timeout"] = "3s"
    agent = agent_process(config).start()
    client = SdkClient("grpc", agent.grpc_endpoint)
    for _ in range(20):
        with client.tracer.start_as_current_span("GET /cart"):
            pass
    client.flush()
    wait_until(lambda: _metric(agent, "tailsampler_exporter_queue_traces") == 2, timeout=15, message="the queue is full")
    started = time.monotonic()
    agent.signal(signum)
    assert agent.wait(timeout=20) == 0, agent.log()
    assert time.monotonic() - started < 3 + 3, "shutdown outlived shutdown_timeout"
    assert "not delivered" in agent.log()
    client.shutdown()
