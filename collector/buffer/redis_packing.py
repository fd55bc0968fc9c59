"""Commands packed by hiredis's C packer.

redis-py's asyncio connections pack every argument of every command in Python (an encoder call,
a length, a join: a few microseconds per argument here, a third of an agent's CPU on a Redis
Cluster under load), where its synchronous client packs with hiredis. ``pack_with_hiredis`` has
a client's connections, made from then on, pack the same bytes with ``hiredis.pack_command``.
"""

from __future__ import annotations

from typing import Any, Iterable

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError


class _PackedByHiredis:
    """Packing as redis-py's synchronous ``HiredisRespSerializer`` does it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return [_packed(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join([_packed(tuple(args)) for args in commands])]


def _packed(args: tuple[Any, ...]) -> bytes:
    name = args[0]
    if (" " if isinstance(name, str) else b" ") in name:  # "SCRIPT LOAD": Redis wants two arguments
        args = (*name.split(), *args[1:])
    try:
        return hiredis.pack_command(args)
    except TypeError as exc:
        raise DataError(str(exc)) from exc


class HiredisConnection(_PackedByHiredis, Connection):
    pass


class HiredisSSLConnection(_PackedByHiredis, SSLConnection):
    pass


class HiredisUnixConnection(_PackedByHiredis, UnixDomainSocketConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection, SSLConnection: HiredisSSLConnection, UnixDomainSocketConnection: HiredisUnixConnection,
}


def pack_with_hiredis(client: Redis | RedisCluster) -> None:
    """Swap a new client's connection classes (plain, TLS or Unix socket, as its URL chose) for
    their hiredis-packing twins, before it has made a connection: a cluster client's for its
    startup nodes and for the nodes it discovers, as redis-py itself amends them."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
        kwargs["connection_class"] = _PACKED.get(kwargs["connection_class"], kwargs["connection_class"])
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = _PACKED.get(node.connection_class, node.connection_class)
    else:
        pool = client.connection_pool
        pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
