"""A background step repeated at an interval, stopped cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from tailsampler.common.incident import Incident

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` now and then every ``interval`` seconds until stopped. Stopping waits for the
    step in flight rather than cancelling it, so no call to a store is abandoned half-way.

    A step that keeps failing is one incident: a warning with its traceback the first time, a
    reminder now and then, a line when a step succeeds again; never a traceback per interval."""

    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[None]], aligned: bool = False) -> None:
        """``aligned``: run on the wall clock's multiples of ``interval`` rather than ``interval``
        after the last run, so that agents' steps fall on the same instants."""
        self._name = name
        self._interval = interval
        self._aligned = aligned
        self._step = step
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._trouble = Incident(log, f"{name}: step failed")

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
                self._trouble.resolved()
            except Exception as exc:
                self._trouble.failed(f"{type(exc).__name__}: {exc}; trying again every {self._interval:.1f}s", traceback=exc)
            try:
                wait = self._interval - time.time() % self._interval if self._aligned else self._interval
                await asyncio.wait_for(self._stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass
