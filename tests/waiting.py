"""Waiting on a condition with a deadline: what tests do instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


def _failure(timeout: float, predicate: Callable[[], Any], message: str) -> AssertionError:
    what = message or getattr(predicate, "__name__", repr(predicate))
    return AssertionError(f"condition not met within {timeout}s: {what}")


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, message: str = "", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(timeout, predicate, message)
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "", interval: float = 0.05) -> Any:
    """The blocking form, for tests that drive processes rather than an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(timeout, predicate, message)
        time.sleep(interval)
