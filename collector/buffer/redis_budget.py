"""Token buckets shared by every agent on one Redis, so N agents keep the configured rate, not N times it.

Policies evaluate synchronously, so ``take`` never waits for Redis. Each bucket lives in Redis
(level refilled by Redis's own clock); every ``interval`` each agent reports, in one script call
for all its buckets, the tokens it spent and its heartbeat, and learns each bucket's level and how
many agents are alive. Until the next exchange an agent may spend its share, level / live agents.
Spending is always charged to the shared level, so the agents together cannot exceed rate x time +
capacity, and an idle agent's share stays in Redis for the busy ones at the next exchange.

While Redis is unreachable each agent refills its share locally at rate / live agents, so
rate-limited traces are still kept at roughly the configured rate instead of none or N times it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from importlib import resources

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AskError, ClusterDownError, ClusterError, MovedError, RedisClusterException, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tailsampler.collector.periodic import Periodic

log = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError, asyncio.TimeoutError)

# what a cluster answers while the budgets' slot moves or its master fails over: try next exchange
_NOT_NOW = (ClusterError, ClusterDownError, TryAgainError, AskError, MovedError)

_SCRIPT = resources.files(__package__).joinpath("redis_budget.lua").read_text()


class SharedTokenBucket:
    """One policy's budget as seen by this agent: its share until the next exchange with Redis.

    A trace that costs more than the share (a big trace, a small burst capacity split among
    many agents) may still take from the shared level once per exchange: what it overdraws is
    charged like any spending, so the level goes negative and later shares pay it back, and
    the long-run rate holds.
    """

    __slots__ = ("key", "rate", "capacity", "allowance", "level", "spent")

    def __init__(self, key: str, rate: float, capacity: float) -> None:
        self.key = key
        self.rate = rate
        self.capacity = capacity
        self.allowance = 0.0
        self.level = 0.0
        self.spent = 0.0

    def take(self, amount: float) -> bool:
        if amount <= self.allowance or (not self.spent and amount <= self.level):
            self.allowance -= amount
            self.level -= amount
            self.spent += amount
            return True
        return False


class SharedBudgets:
    """The bucket factory for ``policies.PolicyContext(clock, bucket=budgets.bucket)``."""

    def __init__(
        self, client: Redis | RedisCluster, key_prefix: str, interval: float = 0.1, agent_id: str | None = None
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._interval = interval
        self.agent_id = agent_id or uuid.uuid4().hex
        self._window_ms = int(max(1.0, 10 * interval) * 1000)
        self._agents_key = f"{key_prefix}:{{budget}}:agents"
        self._buckets: dict[str, SharedTokenBucket] = {}
        self._live = 1
        self._last_step = time.monotonic()
        self._exchange = Periodic("shared-budgets", interval, self._step)
        self._script = client.register_script(_SCRIPT)

    def bucket(self, key: str, rate: float, capacity: float) -> SharedTokenBucket:
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = SharedTokenBucket(key, rate, capacity)
        found.rate, found.capacity = rate, capacity
        return found

    async def start(self) -> None:
        await self._exchange.start()

    async def close(self) -> None:
        await self._exchange.stop()

    async def _step(self) -> None:
        now = time.monotonic()
        try:
            await self.sync()
        except (*UNREACHABLE, *_NOT_NOW) as exc:
            log.debug("shared budgets: Redis unreachable (%s); spending a local share", exc)
            self._refill_locally(now - self._last_step)
        self._last_step = now

    async def sync(self) -> None:
        """Charge what was spent since the last exchange and take a fresh share of each bucket."""
        if not self._buckets:
            return
        buckets = list(self._buckets.values())
        keys = [self._agents_key] + [f"{self._prefix}:{{budget}}:b:{b.key}" for b in buckets]
        ttl_ms = int(max(self._window_ms, max(2000 * b.capacity / b.rate for b in buckets)))
        args: list[object] = [self.agent_id, self._window_ms, ttl_ms]
        spent = []
        for b in buckets:
            spent.append(b.spent)
            b.spent = 0.0
            args += [b.rate, b.capacity, spent[-1]]
        try:
            reply = await self._script(keys=keys, args=args)
        except BaseException:
            for b, amount in zip(buckets, spent):
                b.spent += amount
            raise
        self._live = max(1, int(reply[0]))
        for b, level in zip(buckets, reply[1:]):
            # what was spent while the reply was on its way came out of the previous share
            b.level = float(level) - b.spent
            b.allowance = max(0.0, float(level)) / self._live - b.spent

    def _refill_locally(self, elapsed: float) -> None:
        for b in self._buckets.values():
            b.spent = 0.0
            b.allowance = min(b.capacity / self._live, b.allowance + elapsed * b.rate / self._live)
            b.level = b.allowance
