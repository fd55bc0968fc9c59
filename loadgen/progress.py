"""The progress of a long run on the terminal: how far along, spans sent, their rate, time left.

Drawn on standard error, and only on a terminal: piped or in CI, a run prints its results alone.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


class RunProgress:
    """One bar: ``total`` units of work (seconds, traces or rounds) and the spans sent so far."""

    def __init__(self, description: str, total: float, console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[spans]:>10,} spans"),
            TextColumn("{task.fields[rate]:>8,.0f} spans/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, spans=0, rate=0.0)
        self._started = time.monotonic()

    def __enter__(self) -> "RunProgress":
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._progress.stop()

    def finish(self, spans: int) -> None:
        """The work is done: the bar full, the spans sent in all."""
        self.update(self._progress.tasks[0].total or 0, spans)

    def update(self, completed: float, spans: int, description: str | None = None) -> None:
        elapsed = time.monotonic() - self._started
        fields = {"spans": spans, "rate": spans / elapsed if elapsed > 0 else 0.0}
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, completed=completed, **fields)
