"""The shared delivery pieces on their own: retry budget, backoff, circuit breaker, Retry-After."""

from __future__ import annotations

import asyncio
from email.utils import formatdate
import time

from tailsampler.storage.delivery import Backoff, CircuitBreaker, RetryBudget
from tailsampler.storage.otlp_http import retry_after_seconds
from tailsampler.storage.specs import CircuitConfig, RetryConfig
from tests.otlp_sink import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retry_budget_is_a_share_of_recent_sends() -> None:
    clock = Clock()
    budget = RetryBudget(RetryConfig(budget_ratio=0.25, budget_min_retries=1, budget_window=10.0), clock)
    assert budget.try_retry() and not budget.try_retry()  # the floor allows one with no sends at all
    for _ in range(8):
        budget.record_send()
    assert budget.try_retry() and not budget.try_retry()  # 0.25 * 8 = 2 in the window
    clock.now += 11  # the window moves on: sends and retries age out together
    assert budget.try_retry() and not budget.try_retry()


def test_backoff_is_full_jitter_below_the_cap_and_follows_hints() -> None:
    backoff = Backoff(RetryConfig(initial_interval=0.1, max_interval=1.0))
    delays = [backoff.delay(attempt, None) for attempt in range(10) for _ in range(20)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(backoff.delay(0, None) for _ in range(50)) <= 0.1
    assert backoff.delay(3, 7.5) == 7.5


def test_retry_after_as_seconds_or_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert 8 < retry_after_seconds(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    states: list[str] = []
    breaker = CircuitBreaker(CircuitConfig(failure_threshold=2, cooldown=5.0), states.append, clock)
    breaker.failure()
    await breaker.acquire()  # one failure short of the threshold: still closed
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 5
    await breaker.acquire()
    assert breaker.state == "half_open"
    second = asyncio.create_task(breaker.acquire())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done(), "a second send must wait for the probe's outcome"
    breaker.success()
    await wait_for(second.done, message="waiting send released when the probe succeeded")
    assert states == ["open", "half_open", "closed"]


async def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitConfig(failure_threshold=1, cooldown=5.0), lambda state: None, clock)
    breaker.failure()
    clock.now += 5
    await breaker.acquire()
    breaker.failure()
    assert breaker.state == "open"
    waiting = asyncio.create_task(breaker.acquire())
    clock.now += 4
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
