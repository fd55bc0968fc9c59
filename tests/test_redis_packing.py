"""The Redis buffer's connections pack commands with hiredis, byte for byte as redis-py would,
over plain TCP, TLS and Unix sockets alike."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from tailsampler.collector.buffer.redis import connect
from tailsampler.collector.buffer.redis_packing import HiredisConnection, HiredisSSLConnection, HiredisUnixConnection

COMMANDS = [
    ("EVALSHA", b"0123456789abcdef", 4, b"k1", b"k2", "str", 1796192910.1993823, 2**63, -7, b"", b"\x00\xff" * 5000),
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", "maxmemory"),
    ("MGET", *[b"ts:{3}:s:%032x" % i for i in range(100)]),
]


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    ours, theirs = HiredisConnection(), Connection()
    for command in COMMANDS:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands(COMMANDS)) == b"".join(theirs.pack_commands(COMMANDS))


def test_an_argument_redis_cannot_take_is_refused_as_redis_py_refuses_it() -> None:
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", object())


@pytest.mark.parametrize(("url", "plain", "packed"), [
    ("redis://127.0.0.1:6390/0", Connection, HiredisConnection),
    ("rediss://127.0.0.1:6390/0", SSLConnection, HiredisSSLConnection),
    ("unix:///tmp/tailsampler-redis.sock", UnixDomainSocketConnection, HiredisUnixConnection),
])
async def test_every_kind_of_connection_packs_with_hiredis(url: str, plain: type, packed: type) -> None:
    client = connect(url, False, 1.0)
    try:
        assert client.connection_pool.connection_class is packed and issubclass(packed, plain)
    finally:
        await client.aclose()


async def test_a_cluster_clients_nodes_pack_with_hiredis() -> None:
    client = connect("redis://127.0.0.1:6390", True, 1.0)  # nothing is connected before initialize()
    try:
        assert client.nodes_manager.connection_kwargs["connection_class"] is HiredisConnection
        assert all(node.connection_class is HiredisConnection for node in client.nodes_manager.startup_nodes.values())
    finally:
        await client.aclose()


async def test_the_nodes_a_cluster_client_discovers_pack_with_hiredis(clean_redis_cluster) -> None:
    client = connect(clean_redis_cluster.url, True, 5.0)
    try:
        await client.set("{0}packed", b"1")
        assert await client.get("{0}packed") == b"1"
        nodes = client.nodes_manager.nodes_cache.values()
        assert len(nodes) >= 3 and all(node.connection_class is HiredisConnection for node in nodes)
    finally:
        await client.aclose()
