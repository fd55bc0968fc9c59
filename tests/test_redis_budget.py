"""Token buckets shared through Redis: three agents keep the configured rate together."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest
import redis

from tailsampler.collector.buffer.redis import connect
from tailsampler.collector.buffer.redis_budget import SharedBudgets, SharedTokenBucket

RATE = 300.0
CAPACITY = 60.0
KEY = "tail_sampling.policies[0].rate_limiting:limit"


def live_agents(url: str, prefix: str) -> int:
    """The agents the budgets count as live, as Redis holds them."""
    with redis.Redis.from_url(url) as client:
        return client.zcard(f"{prefix}:{{budget}}:agents")


@pytest.fixture
async def agents(clean_redis_url: str) -> AsyncIterator[list[SharedBudgets]]:
    """Three agents' budget factories, each with its own connection, as three processes would."""
    clients = [connect(clean_redis_url, False, 2.0) for _ in range(3)]
    made = [SharedBudgets(client, "ts", interval=0.05) for client in clients]
    for budgets in made:
        await budgets.start()
    yield made
    for budgets, client in zip(made, clients):
        await budgets.close()
        await client.aclose()


async def spend(bucket: SharedTokenBucket, demand_per_tick: int, until: float, window: tuple[float, float]) -> int:
    """Try to keep ``demand_per_tick`` one-token traces every 10 ms; count keeps inside ``window``."""
    kept = 0
    while (now := time.monotonic()) < until:
        for _ in range(demand_per_tick):
            if bucket.take(1) and window[0] <= now < window[1]:
                kept += 1
        await asyncio.sleep(0.01)
    return kept


@pytest.mark.parametrize("demand", [(10, 10, 10), (20, 2, 0)], ids=["even", "uneven"])
async def test_three_agents_keep_the_configured_rate(
    agents: list[SharedBudgets], demand: tuple[int, int, int], clean_redis_url: str
) -> None:
    buckets = [budgets.bucket(KEY, RATE, CAPACITY) for budgets in agents]
    start = time.monotonic()
    # the first second spends the burst capacity and lets every agent see the others
    window = (start + 1.0, start + 3.0)
    kept = await asyncio.gather(*(spend(b, d, window[1], window) for b, d in zip(buckets, demand)))
    rate = sum(kept) / (window[1] - window[0])
    assert abs(rate - RATE) <= 0.15 * RATE, f"cluster-wide rate {rate:.0f}/s, configured {RATE:.0f}/s ({kept})"
    assert live_agents(clean_redis_url, "ts") == 3


async def test_an_agent_alone_gets_the_whole_budget(clean_redis_url: str) -> None:
    client = connect(clean_redis_url, False, 2.0)
    budgets = SharedBudgets(client, "solo", interval=0.05)
    bucket = budgets.bucket(KEY, RATE, CAPACITY)
    try:
        await budgets.sync()
        assert live_agents(clean_redis_url, "solo") == 1
        assert bucket.take(CAPACITY), "a lone agent may spend the whole burst capacity"
        assert not bucket.take(1)
    finally:
        await client.aclose()


async def test_a_trace_dearer_than_an_agents_share_can_still_be_kept(clean_redis_url: str) -> None:
    clients = [connect(clean_redis_url, False, 2.0) for _ in range(3)]
    agents = [SharedBudgets(client, "dear") for client in clients]
    buckets = [budgets.bucket("small-burst", 30, 6) for budgets in agents]  # a share is 6 / 3 = 2
    try:
        for _ in range(2):  # the first round makes every agent known to the others
            for budgets in agents:
                await budgets.sync()
        assert live_agents(clean_redis_url, "dear") == 3
        assert all(b.take(3) for b in buckets), "a 3-span trace must fit a bucket whose capacity is 6"
        assert not any(b.take(3) for b in buckets), "one overdraft per agent between exchanges"
        for _ in range(2):  # after one round the first agent has not yet seen the others' spending
            for budgets in agents:
                await budgets.sync()
        assert not any(b.take(1) for b in buckets), "the overdrafts are charged to the shared level"
    finally:
        for client in clients:
            await client.aclose()
