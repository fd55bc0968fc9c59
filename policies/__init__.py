"""The policy engine: the OpenTelemetry Collector tail_sampling policies and more, one module per
policy type, and the engine that combines their votes.

Public surface: ``PolicySpec`` (config union), ``RecordingConfig``, ``build_engine`` / ``Engine``
/ ``Evaluation``, ``policy_problems`` (checking a config's policy list), ``record`` (optional
rewrite of kept traces) and the vocabulary in ``base`` and ``trace``.
"""

from tailsampler.common.verdict import Verdict

from .base import Decision, LocalTokenBucket, Policy, PolicyContext, TokenBucket
from .engine import Engine, EngineSettings, Evaluation, build_engine, policy_problems
from .reach import never_keeps
from .recording import RecordingConfig, record
from .specs import PolicySpec
from .trace import SpanRef, TraceView

__all__ = [
    "Decision",
    "Engine",
    "EngineSettings",
    "Evaluation",
    "LocalTokenBucket",
    "Policy",
    "PolicyContext",
    "PolicySpec",
    "RecordingConfig",
    "SpanRef",
    "TokenBucket",
    "TraceView",
    "Verdict",
    "build_engine",
    "never_keeps",
    "policy_problems",
    "record",
]
