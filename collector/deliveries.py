"""Kept traces handed to the exporters outside a decision round, whose delivery the buffer is told.

A buffer with a log (memory with ``buffer.wal``) keeps a kept trace until every exporter has
finished with it, so that a restart delivers it again; this waits for the exporters and then
says so (``TraceBuffer.delivered``) for the spans ingest forwards (late spans of kept traces,
traces overload relief kept), the spans that arrived while their trace was decided, and the
traces delivered again after a restart. A delivery that shutdown cut short is not reported: the
trace stays in the log for the next start.
"""

from __future__ import annotations

import asyncio
import time

from tailsampler.collector.buffer import Settlement, TraceBuffer

Delivery = tuple[Settlement, list["asyncio.Future[bool]"]]  # a kept trace and each exporter's hand-over


class Deliveries:
    def __init__(self, buffer: TraceBuffer) -> None:
        self._buffer = buffer
        self._waiting: set[asyncio.Task[None]] = set()

    def watch(self, deliveries: list[Delivery]) -> None:
        """Tell the buffer about these deliveries once every exporter has finished with them."""
        if not deliveries:
            return
        task = asyncio.create_task(self._report(deliveries))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _report(self, deliveries: list[Delivery]) -> None:
        await asyncio.gather(*(future for _, done in deliveries for future in done))
        self._buffer.delivered([s for s, done in deliveries if all(f.result() for f in done)], time.time())

    async def settled(self) -> None:
        """Wait until every delivery watched is reported (after the exporters closed, at once)."""
        while self._waiting:
            await asyncio.gather(*self._waiting)
