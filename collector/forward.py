"""Hands kept traces to every configured exporter: fresh decisions and late spans alike.

Recording (``tail_sampling.recording``) happens here, once, so a late span of a kept trace
carries the same sampling facts as the spans that were decided with it.
"""

from __future__ import annotations

from policies import RecordingConfig, Verdict, record
from storage import Exporter, KeptTrace


class Forwarder:
    def __init__(self, exporters: list[Exporter], recording: RecordingConfig) -> None:
        self.exporters = exporters
        self._recording = recording

    async def forward(
        self, trace_id: bytes, data: bytes, verdict: Verdict, span_count: int = 0, late: bool = False
    ) -> None:
        """``span_count`` 0 means unknown (the exporters count for themselves)."""
        kept = KeptTrace(trace_id, record(data, verdict, self._recording), verdict.policy, late, span_count)
        for exporter in self.exporters:
            await exporter.submit(kept)
