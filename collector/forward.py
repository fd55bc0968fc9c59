"""Hands kept traces to every configured exporter: fresh decisions and late spans alike.

Recording (``tail_sampling.recording``) happens here, once, so a late span of a kept trace
carries the same sampling facts as the spans that were decided with it.

A config reload replaces the exporters and the recording settings together (``replace``): a
trace being handed over when that happens goes to the exporters it started with, all of them, and
``replace`` returns only once every such hand-over has finished, so an exporter that is going
away can then be closed without a trace arriving after it closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tailsampler.common.verdict import Verdict
from tailsampler.policies import Decision, RecordingConfig, record
from tailsampler.storage import Exporter, KeptTrace


class _Route:
    """Where kept traces go, and how many hand-overs are still using this route; ``drained``
    exists only once the route is replaced with hand-overs in flight (so a hand-over costs two
    additions, not an event)."""

    def __init__(self, exporters: list[Exporter], recording: RecordingConfig) -> None:
        self.exporters = exporters
        self.recording = recording
        self.in_flight = 0
        self.drained: asyncio.Future[None] | None = None


class Forwarder:
    def __init__(self, exporters: list[Exporter], recording: RecordingConfig) -> None:
        self._route = _Route(exporters, recording)

    @property
    def exporters(self) -> list[Exporter]:
        return self._route.exporters

    async def forward(
        self,
        trace_id: bytes,
        data: bytes,
        verdict: Verdict,
        span_count: int = 0,
        late: bool = False,
        votes: Mapping[str, Decision] | None = None,
    ) -> list[asyncio.Future[bool]]:
        """Queue the trace on every exporter; the futures resolve when each is finished with it
        (True) or was cut short by shutdown (False). ``span_count`` 0 means unknown; ``votes``
        (every policy's, for a fresh decision) go along for stores that show why a trace was kept."""
        route = self._route
        route.in_flight += 1
        try:
            data = record(data, verdict, route.recording)
            named = {name: vote.value for name, vote in votes.items()} if votes else None
            loop = asyncio.get_running_loop()
            done: list[asyncio.Future[bool]] = []
            for exporter in route.exporters:
                future: asyncio.Future[bool] = loop.create_future()
                done.append(future)
                await exporter.submit(KeptTrace(trace_id, data, verdict, late, span_count, future, named))
            return done
        finally:
            route.in_flight -= 1
            if route.drained is not None and not route.in_flight:
                route.drained.set_result(None)

    def replace(self, exporters: list[Exporter], recording: RecordingConfig) -> "asyncio.Future[None]":
        """Send kept traces to ``exporters``, recorded as ``recording`` says, from now on; the
        future returned is done once no hand-over to the previous exporters is left."""
        previous = self._route
        self._route = _Route(exporters, recording)
        drained = previous.drained = asyncio.get_running_loop().create_future()
        if not previous.in_flight:
            drained.set_result(None)
        return drained
