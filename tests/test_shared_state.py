"""The SharedState contract: what agents using one buffer share beside it (readiness of the
store, rate-limiting budgets, published counters), for every kind of buffer, against real servers."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import SharedState, make_buffer
from tailsampler.collector.config import Config
from tailsampler.common.settings import decode
from tests.otlp_data import new_trace_id
from tests.redis_servers import RedisProcess
from tests.waiting import eventually

MakeState = Callable[..., Awaitable[SharedState]]


def buffer_section(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "redis":
        return {"type": "redis", "url": request.getfixturevalue("redis_url")}
    if kind == "redis_cluster":
        return {"type": "redis", "url": request.getfixturevalue("redis_cluster_url"), "cluster": True}
    return {"type": "memory"}


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeState]:
    """Start the shared state of agents of one fleet (one key prefix per test)."""
    section = {**buffer_section(request.param, request), "tick": "50ms"}
    if section["type"] == "redis":
        section["key_prefix"] = f"s{new_trace_id().hex()[:8]}"
    started: list[SharedState] = []

    async def start(**overrides: Any) -> SharedState:
        config = decode({"buffer": {**section, **overrides}}, Config)
        _, state = make_buffer(config, CollectorRegistry())
        await state.start()
        started.append(state)
        return state

    yield start
    for state in started:
        await state.close()


async def test_a_reachable_store_is_ready(make: MakeState) -> None:
    ready, detail = await (await make()).check()
    assert ready, detail


async def test_a_lone_agent_spends_the_whole_capacity_and_no_more(make: MakeState) -> None:
    state = await make()
    bucket = state.bucket("tail_sampling.policies[0].rate_limiting:limit", 1.0, 20.0)
    await eventually(lambda: bucket.take(20), 5, "the whole burst capacity becomes spendable")
    assert not bucket.take(5), "spent twice"


async def test_every_agent_reads_every_agents_counters(make: MakeState) -> None:
    a, b = await make(), await make()
    await a.publish({"spans": {"received": 3}})
    await b.publish({"spans": {"received": 4}})
    fleet = await a.fleet()
    if fleet is None:  # an agent on its own memory has no fleet to share with
        assert await b.fleet() is None
        return
    assert sorted(f["spans"]["received"] for f in fleet) == [3, 4]
    assert sorted(f["spans"]["received"] for f in await b.fleet()) == [3, 4]


async def test_an_unreachable_redis_is_not_ready(tmp_path: Any) -> None:
    server = RedisProcess(tmp_path / "redis")
    config = decode({"buffer": {"type": "redis", "url": server.url, "timeout": "500ms"}}, Config)
    _, state = make_buffer(config, CollectorRegistry())
    try:
        await state.start()
        assert (await state.check())[0]
        server.stop()
        ready, detail = await state.check()
        assert not ready and str(server.port) in detail
    finally:
        await state.close()
        server.stop()
