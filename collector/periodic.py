"""A background step repeated at an interval, stopped cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` now and then every ``interval`` seconds until stopped. Stopping waits for the
    step in flight rather than cancelling it, so no call to a store is abandoned half-way."""

    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[None]], aligned: bool = False) -> None:
        """``aligned``: run on the wall clock's multiples of ``interval`` rather than ``interval``
        after the last run, so that agents' steps fall on the same instants."""
        self._name = name
        self._interval = interval
        self._aligned = aligned
        self._step = step
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._step()
            except Exception:
                log.exception("%s: step failed; trying again in %.1fs", self._name, self._interval)
            try:
                wait = self._interval - time.time() % self._interval if self._aligned else self._interval
                await asyncio.wait_for(self._stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass
