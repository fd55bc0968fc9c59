"""The exporter interface: where kept traces go once the policy engine keeps them."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

from tailsampler.common.verdict import Verdict


class ExporterSetupError(Exception):
    """An exporter cannot start: unreadable certificate, unusable file or database path, ..."""


@dataclass(frozen=True, slots=True)
class KeptTrace:
    """A kept trace as the collector received it: ``data`` is a valid ``TracesData`` body, and
    ``verdict`` says which policy kept it and at what rate.

    ``late`` marks spans that arrived after their trace was kept and are forwarded on their own.
    ``span_count`` (0 = unknown) saves the exporter a parse when the caller already knows it.
    ``done``, when given, resolves True once the exporter is finished with the trace (delivered,
    or given up for good) and False if shutdown cut it short, so the buffer settles a kept trace
    only after its delivery: an agent that dies first leaves it to be decided again.
    """

    trace_id: bytes
    data: bytes
    verdict: Verdict
    late: bool = False
    span_count: int = 0
    done: "asyncio.Future[bool] | None" = None
    # every policy's vote by policy name, for a fresh decision (None for late spans)
    votes: dict[str, str] | None = None


class Exporter(abc.ABC):
    name: str

    async def open(self) -> None:
        """Acquire what can fail (connections, files, certificates, databases) without taking
        traces yet, so a config reload can refuse an exporter that cannot work before it replaces
        a running one."""

    async def start(self) -> None:
        """Open (if not yet done) and begin delivering."""
        await self.open()

    @abc.abstractmethod
    async def submit(self, trace: KeptTrace) -> None:
        """Queue a kept trace for delivery; waits while the bounded queue is full."""

    @abc.abstractmethod
    async def close(self, timeout: float, reason: str = "shutdown") -> None:
        """Deliver what is queued (within ``timeout`` seconds), then release resources. What is
        left is counted as failed with ``reason``: at ``shutdown`` the buffer keeps those traces
        for another decision; when a reload ``removed`` or ``replaced`` the exporter they are
        given up for good."""

    @abc.abstractmethod
    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, details such as circuit state and queue depth) for /health/ready."""
