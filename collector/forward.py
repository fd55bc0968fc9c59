"""Hands kept traces to every configured exporter: fresh decisions and late spans alike.

Recording (``tail_sampling.recording``) happens here, once, so a late span of a kept trace
carries the same sampling facts as the spans that were decided with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tailsampler.common.verdict import Verdict
from tailsampler.policies import Decision, RecordingConfig, record
from tailsampler.storage import Exporter, KeptTrace


class Forwarder:
    def __init__(self, exporters: list[Exporter], recording: RecordingConfig) -> None:
        self.exporters = exporters
        self._recording = recording

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
        data = record(data, verdict, self._recording)
        named = {name: vote.value for name, vote in votes.items()} if votes else None
        loop = asyncio.get_running_loop()
        done: list[asyncio.Future[bool]] = []
        for exporter in self.exporters:
            future: asyncio.Future[bool] = loop.create_future()
            done.append(future)
            await exporter.submit(KeptTrace(trace_id, data, verdict, late, span_count, future, named))
        return done
