"""What agents sharing a Redis buffer share beside it, in the same Redis or Redis Cluster.

- readiness: every shard of the buffer is served (each by the master its slot is on now);
- the rate-limiting budgets (``redis_budget.SharedBudgets``), so N agents keep the configured
  rate, not N times it;
- every agent's counters, published every few seconds into one hash (hash tag ``{fleet}``), so
  any agent can answer for the whole fleet. An agent that stops publishing leaves the fleet's
  figures after ``_FLEET_STALE`` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from redis.exceptions import AskError, RedisError, TryAgainError

from tailsampler.collector.config import BufferConfig

from .base import BufferUnavailable, SharedState
from .redis import connect, shard_keys, where
from .redis_budget import UNREACHABLE, SharedBudgets, SharedTokenBucket
from .redis_routing import Routed, Router

log = logging.getLogger(__name__)

_FLEET_STALE = 30.0  # seconds without a published snapshot before an agent leaves the fleet stats


class RedisState(SharedState):
    def __init__(self, config: BufferConfig) -> None:
        self._client = connect(config.url, config.cluster, float(config.timeout))
        self._router = Router(self._client)
        assert config.shards is not None
        # one key of each shard names its slot: EXISTS on it asks the master that serves the shard
        self._probes = [
            Routed(key, ("EXISTS", key)) for key in (shard_keys(config.key_prefix, n)[3] for n in range(config.shards))
        ]
        self.budgets = SharedBudgets(self._client, config.key_prefix, interval=float(config.tick))
        self._stats_key = f"{config.key_prefix}:{{fleet}}:stats"
        self._seen_key = f"{config.key_prefix}:{{fleet}}:seen"

    async def start(self) -> None:
        ready, detail = await self.check()
        if not ready:
            log.warning("redis buffer: %s; retrying on use", detail)
        await self.budgets.start()

    async def close(self) -> None:
        await self.budgets.close()
        await self._router.close()
        await self._client.aclose()

    async def check(self) -> tuple[bool, str]:
        """Ready when the master of every shard answers. A shard whose slot is being migrated is
        served (its scripts wait for the migration); a master that is down, or a cluster that
        is electing a replica in its place (CLUSTERDOWN), is not. Asking again after a failure
        also has the slot map read again, so readiness comes back with the promoted replica."""
        try:
            replies = await self._router.run(self._probes, until=0.0)
        except (*UNREACHABLE, RedisError) as exc:
            return False, f"redis {where(self._client)} unavailable: {exc}"
        down = [
            (shard, reply) for shard, reply in enumerate(replies)
            if isinstance(reply, Exception) and not isinstance(reply, (AskError, TryAgainError))
        ]
        if down:
            shards = ", ".join(str(shard) for shard, _ in down)
            return False, f"redis {where(self._client)}: shard(s) {shards} of {len(replies)} unavailable: {down[0][1]}"
        return True, f"redis {where(self._client)} ok ({len(replies)} shard(s))"

    def bucket(self, key: str, rate: float, capacity: float) -> SharedTokenBucket:
        return self.budgets.bucket(key, rate, capacity)

    async def publish(self, counters: dict[str, Any]) -> None:
        agent, now = self.budgets.agent_id, time.time()
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(self._stats_key, agent, msgspec.json.encode(counters))
            pipe.zadd(self._seen_key, {agent: now})
            pipe.zrangebyscore(self._seen_key, "-inf", now - _FLEET_STALE)
            pipe.expire(self._stats_key, int(_FLEET_STALE * 10))
            pipe.expire(self._seen_key, int(_FLEET_STALE * 10))
            stale = (await pipe.execute())[2]
            if stale:
                await self._client.hdel(self._stats_key, *stale)
                await self._client.zrem(self._seen_key, *stale)
        except (*UNREACHABLE, RedisError) as exc:
            raise BufferUnavailable(f"redis {where(self._client)}: fleet stats not published: {exc}") from exc

    async def fleet(self) -> list[dict[str, Any]]:
        try:
            live = await self._client.zrangebyscore(self._seen_key, time.time() - _FLEET_STALE, "+inf")
            published = await self._client.hmget(self._stats_key, live) if live else []
        except (*UNREACHABLE, RedisError) as exc:
            raise BufferUnavailable(f"redis {where(self._client)}: fleet stats unavailable: {exc}") from exc
        return [msgspec.json.decode(p) for p in published if p is not None]
