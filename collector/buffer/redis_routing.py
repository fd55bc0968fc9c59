"""Sending each shard's commands to the node that serves it, while a Redis Cluster moves slots
between masters and fails masters over to their replicas.

redis-py's asyncio cluster client is not enough for the buffer on its own. Asked to pipeline, it
resends a redirected command by itself, one command at a time: ASK with an ``ASKING`` sent on
a pooled connection that need not be the one the command then takes (the node answers MOVED
back), TRYAGAIN for about 0.4 s, and every fifth MOVED it closes every connection of the client,
other requests' included. A master that stops answering leaves its slot map as it was: pipelines
go on to the dead master after its replica has taken over. And ``WAIT`` must follow the scripts
it waits for on their own connection. So ``Router`` sends one pipeline per node, reads
redirections as answers, and

- MOVED (the slot moved for good: resharding, failover): patches the slot map and sends again;
- ASK, TRYAGAIN (the slot is being migrated), CLUSTERDOWN, MASTERDOWN, LOADING (a new master is
  being elected, a server is loading): sends again after 5 ms, doubling up to 100 ms, until the
  caller's deadline. Every buffer script declares a key that never exists, so that while a
  shard's keys are split between two nodes neither runs it (the source answers TRYAGAIN or ASK,
  the target TRYAGAIN): following an ASK would only cost a round trip;
- NOSCRIPT (a promoted replica or a new master has not loaded the scripts): has the caller load
  them on that node, and sends again;
- a connection that fails or times out: the commands on it may or may not have run, so they
  are not sent again; the slot map is read again from a live node (in the background, at most
  every ``_REFRESH_INTERVAL``), so that the next command finds the master that took over.

On a single server there is nothing to route: one pipeline, the same answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable, NamedTuple, Sequence

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
    TryAgainError,
)

log = logging.getLogger(__name__)

_FIRST_PAUSE = 0.005
_LONGEST_PAUSE = 0.1
_REFRESH_INTERVAL = 0.25
_MAX_ROUNDS = 32  # MOVED and NOSCRIPT are sent again without a pause; this bounds them
# answers that say the command did not run, and may run in a moment (MasterDownError is a
# ClusterDownError)
_NOT_NOW = (AskError, TryAgainError, ClusterDownError, BusyLoadingError)


class Routed(NamedTuple):
    """One command and a key of the shard it belongs to, which names its slot (a tuple: one is
    made per shard per request)."""

    key: bytes
    args: tuple[object, ...]


class NotReplicated(RedisError):
    """A command ran on its master, but fewer replicas than asked acknowledged it in time: a
    failover now could lose what it wrote."""

    def __init__(self, node: str, acked: object, wanted: int, reply: object) -> None:
        if isinstance(acked, int):
            super().__init__(f"{node}: {acked} of {wanted} replica(s) acknowledged the write in time (WAIT)")
        else:
            super().__init__(f"{node}: WAIT for {wanted} replica(s) failed: {acked}")
        self.reply = reply


Reload = Callable[[ClusterNode | None], Awaitable[None]]


class Router:
    """Runs commands, each on the node that serves its key's slot; see the module's docstring.

    ``wait_replicas`` > 0: ``run(..., replicated=True)`` follows each node's commands with
    ``WAIT wait_replicas wait_ms`` on the same connection, and a command that ran where fewer
    replicas acknowledged it is answered with ``NotReplicated``.
    """

    def __init__(
        self, client: Redis | RedisCluster, reload: Reload | None = None, wait_replicas: int = 0, wait_ms: int = 0
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._reload = reload
        self._wait = ("WAIT", wait_replicas, wait_ms) if wait_replicas > 0 else None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    async def run(self, commands: Sequence[Routed], until: float, replicated: bool = False) -> list[object]:
        """Each command's reply, or the exception it ended with. ``until`` (``time.monotonic``)
        is when to stop sending again commands that met a migration or an election."""
        results: list[object] = [None] * len(commands)
        pending = list(range(len(commands)))
        pause = _FIRST_PAUSE
        for _ in range(_MAX_ROUNDS):
            again, wait = await self._round(commands, pending, results, replicated)
            if not again:
                return results
            pending = again
            if wait:
                if time.monotonic() + pause > until:
                    break
                await asyncio.sleep(pause)
                pause = min(2 * pause, _LONGEST_PAUSE)
        return results

    async def _round(
        self, commands: Sequence[Routed], pending: list[int], results: list[object], replicated: bool
    ) -> tuple[list[int], bool]:
        """Send the pending commands once; returns those to send again, and whether to pause first."""
        by_node: dict[str, tuple[ClusterNode | None, list[int]]] = {}
        if self._cluster:
            await self._client.initialize()  # a no-op unless the client lost its slot map
            for i in pending:
                node = self._client.get_node_from_key(commands[i].key)
                by_node.setdefault(node.name, (node, []))[1].append(i)
        else:
            by_node[""] = (None, pending)
        groups = list(by_node.values())
        wait = self._wait if replicated else None
        replies: list[list[object] | BaseException]
        if len(groups) == 1:  # a single server, or one node: no task to gather
            node, indices = groups[0]
            try:
                replies = [await self._send(node, [commands[i] for i in indices], wait)]
            except Exception as exc:
                replies = [exc]
        else:
            replies = await asyncio.gather(
                *(self._send(node, [commands[i] for i in indices], wait) for node, indices in groups),
                return_exceptions=True,
            )
        again: list[int] = []
        pause = False
        for (node, indices), reply in zip(groups, replies):
            if isinstance(reply, BaseException):
                if not isinstance(reply, Exception):
                    raise reply
                for i in indices:
                    results[i] = reply
                self._refresh(node)
                continue
            acked = reply[-1] if wait else None
            replicas_short = wait is not None and not (isinstance(acked, int) and acked >= wait[1])
            for i, answer in zip(indices, reply):
                results[i] = answer
                if not isinstance(answer, Exception):
                    if replicas_short:
                        results[i] = NotReplicated(node.name if node else "redis", acked, wait[1], answer)  # type: ignore[index]
                elif isinstance(answer, MovedError):
                    await self._client.nodes_manager.move_slot(answer)
                    again.append(i)
                elif isinstance(answer, _NOT_NOW):
                    if isinstance(answer, ClusterDownError):
                        self._refresh(node)
                    again.append(i)
                    pause = True
                elif isinstance(answer, NoScriptError) and self._reload is not None:
                    await self._reload(node)
                    again.append(i)
        return again, pause

    async def _send(
        self, node: ClusterNode | None, commands: list[Routed], wait: tuple[str, int, int] | None
    ) -> list[object]:
        """The commands' replies, an error reply being that command's answer: one pipeline on one
        connection of the node (or of the single server's pool), written in one piece and read
        back in order, with ``WAIT`` last on the same connection. redis-py's own pipelines do the
        same with bookkeeping per command that costs more than the commands' packing (a cluster
        pipeline looks each command's slot up again, though the node is named); a connection
        that fails midway is closed, since answers may still be on their way on it. The replies
        share one deadline, the socket timeout, instead of one timer each."""
        args = [command.args for command in commands]
        if wait:
            args.append(wait)
        pool = self._client.connection_pool if node is None else None
        if pool is not None:
            connection = await pool.get_connection()
        else:
            assert node is not None
            connection = node.acquire_connection()
            await node.disconnect_if_needed(connection)
        try:
            await connection.send_packed_command(connection.pack_commands(args))
            replies: list[object] = []
            async with asyncio.timeout(connection.socket_timeout):  # one deadline for all the replies
                for _ in args:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as error:  # MOVED, TRYAGAIN, NOSCRIPT, a script's error...
                        replies.append(error)
            return replies
        except TimeoutError as exc:  # asyncio's: the replies' deadline passed
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply from {node.name if node else 'redis'} within {connection.socket_timeout}s") from exc
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            if pool is not None:
                await pool.release(connection)
            else:
                assert node is not None
                node.release(connection)

    def _refresh(self, failed: ClusterNode | None) -> None:
        """Read the slot map again, in the background and not too often: after a master died, the
        map names it until its replica has been promoted."""
        if not self._cluster or (self._refreshing and not self._refreshing.done()):
            return
        if time.monotonic() < self._refreshed_at + _REFRESH_INTERVAL:
            return
        self._refreshed_at = time.monotonic()
        self._refreshing = asyncio.create_task(self._read_slots(failed.name if failed else None), name="redis-slot-map")

    async def _read_slots(self, failed: str | None) -> None:
        try:
            await self._client.nodes_manager.initialize(last_failed_node_name=failed)
        except Exception as exc:  # no node answered: the next failure tries again
            log.debug("redis cluster: slot map not refreshed: %s", exc)
        finally:
            self._refreshed_at = time.monotonic()

    async def close(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            try:
                await self._refreshing
            except (asyncio.CancelledError, Exception):
                pass
