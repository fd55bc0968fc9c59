"""Trace buffers (the embedded memory buffer, the shared Redis buffer) and what agents sharing
one share beside it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tailsampler.collector.config import BufferLimits, Config

from .base import (
    AppendResult,
    BufferFull,
    BufferUnavailable,
    Claimed,
    Occupancy,
    Relief,
    Settlement,
    SharedState,
    TraceBuffer,
    Undelivered,
)
from .memory import LocalState, MemoryTraceBuffer
from .wal import WalError

__all__ = [
    "AppendResult",
    "BufferFull",
    "BufferUnavailable",
    "Claimed",
    "LocalState",
    "MemoryTraceBuffer",
    "Occupancy",
    "Relief",
    "Settlement",
    "SharedState",
    "TraceBuffer",
    "Undelivered",
    "WalError",
    "make_buffer",
]


def make_buffer(config: Config, registry: CollectorRegistry) -> tuple[TraceBuffer, SharedState]:
    """The configured buffer and the state its agents share beside it."""
    limits = BufferLimits.of(config)
    if config.buffer.type == "redis":
        from .redis import RedisTraceBuffer
        from .redis_state import RedisState

        return RedisTraceBuffer(limits, config.buffer, registry), RedisState(config.buffer)
    buffer = MemoryTraceBuffer(limits, config.buffer, registry)
    return buffer, LocalState(buffer.health)
