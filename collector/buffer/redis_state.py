"""What agents sharing a Redis buffer share beside it, in the same Redis or Redis Cluster.

- readiness: the store answers (every master of a cluster);
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
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from tailsampler.collector.config import BufferConfig

from .base import BufferUnavailable, SharedState
from .redis import connect, where
from .redis_budget import UNREACHABLE, SharedBudgets, SharedTokenBucket

log = logging.getLogger(__name__)

_FLEET_STALE = 30.0  # seconds without a published snapshot before an agent leaves the fleet stats


class RedisState(SharedState):
    def __init__(self, config: BufferConfig) -> None:
        self._client = connect(config.url, config.cluster, float(config.timeout))
        self._cluster = config.cluster
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
        await self._client.aclose()

    async def check(self) -> tuple[bool, str]:
        try:
            if self._cluster:
                await self._client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._client.ping()
        except (*UNREACHABLE, RedisError) as exc:
            return False, f"redis {where(self._client)} unavailable: {exc}"
        return True, f"redis {where(self._client)} ok"

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
