"""The policy engine: the OpenTelemetry Collector tail_sampling policies and more, one module per
policy type, and the engine that combines their votes.

Public surface: ``PolicySpec`` (config union), ``TailSamplingConfig``, ``DecisionCacheConfig``,
``RecordingConfig``, ``build_engine`` / ``Engine``, ``record`` (optional rewrite of kept traces)
and the vocabulary in ``base`` and ``trace``.
"""

from .base import Decision, LocalTokenBucket, Policy, PolicyContext, TokenBucket, Verdict
from .config import DecisionCacheConfig, RecordingConfig, TailSamplingConfig
from .engine import Engine, build_engine
from .recording import record
from .specs import PolicySpec
from .trace import SpanRef, TraceView

__all__ = [
    "Decision",
    "DecisionCacheConfig",
    "Engine",
    "LocalTokenBucket",
    "Policy",
    "PolicyContext",
    "PolicySpec",
    "RecordingConfig",
    "SpanRef",
    "TailSamplingConfig",
    "TokenBucket",
    "TraceView",
    "Verdict",
    "build_engine",
    "record",
]
