"""Trace buffers: the interface, the embedded memory buffer, and the shared Redis buffer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tailsampler.collector.config import Config

from .base import (
    AppendResult,
    BufferFull,
    BufferStats,
    BufferUnavailable,
    CachedDecision,
    Claimed,
    Settlement,
    TraceBuffer,
)
from .memory import MemoryTraceBuffer

__all__ = [
    "AppendResult",
    "BufferFull",
    "BufferStats",
    "BufferUnavailable",
    "CachedDecision",
    "Claimed",
    "MemoryTraceBuffer",
    "Settlement",
    "TraceBuffer",
    "make_buffer",
]


def make_buffer(config: Config, registry: CollectorRegistry) -> TraceBuffer:
    if config.buffer.type == "redis":
        from .redis import RedisTraceBuffer

        return RedisTraceBuffer(
            config.buffer, config.tail_sampling, overflow=config.overflow, registry=registry
        )
    return MemoryTraceBuffer(
        config.tail_sampling,
        tick=float(config.buffer.tick),
        max_bytes=config.buffer.max_bytes,
        overflow=config.overflow,
    )
