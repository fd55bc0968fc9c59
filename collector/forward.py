"""Hands kept traces to every configured exporter: fresh decisions and late spans alike."""

from __future__ import annotations

from storage import Exporter, KeptTrace


class Forwarder:
    def __init__(self, exporters: list[Exporter]) -> None:
        self.exporters = exporters

    async def forward(self, trace: KeptTrace) -> None:
        for exporter in self.exporters:
            await exporter.submit(trace)

    async def forward_late(self, trace_id: bytes, data: bytes, policy: str | None) -> None:
        await self.forward(KeptTrace(trace_id, data, policy, late=True))
