"""Logging a condition that repeats, the way an SRE wants to read it.

A Redis that is down fails every tick, an exporter whose backend is gone fails every batch: a line
per failure buries everything else (and a traceback per tick fills a disk). An ``Incident`` logs
one warning when the trouble starts, a reminder at most every ``remind_every`` seconds while it
lasts (how long, how many failures, the latest error), and one line when it is over.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

REMIND_EVERY = 60.0


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Incident:
    """One thing that can go wrong again and again (``what``: "redis buffer 10.0.0.5:6379")."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        remind_every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self.what = what
        self._remind_every = remind_every
        self._clock = clock
        self._since: float | None = None
        self._reminded = 0.0
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: object, *, traceback: BaseException | bool = False) -> None:
        """One more failure. The first is a warning, with the traceback of ``traceback`` (an
        exception, or True for the one being handled) when given: an unexpected exception deserves
        one, once. Later failures only feed the reminder."""
        now = self._clock()
        self.failures += 1
        if self._since is None:
            self._since = self._reminded = now
            self._log.warning("%s: %s", self.what, error, exc_info=traceback)
        elif now - self._reminded >= self._remind_every:
            self._reminded = now
            self._log.warning(
                "%s: still failing after %s (%d failures); latest: %s",
                self.what, _duration(now - self._since), self.failures, error,
            )

    def resolved(self) -> None:
        """Things work again: one line if they had not, nothing otherwise (cheap to call on every success)."""
        if self._since is None:
            return
        self._log.info(
            "%s: recovered after %s (%d failures)", self.what, _duration(self._clock() - self._since), self.failures
        )
        self._since = None
        self.failures = 0
