"""The ``tail_sampling`` section: the OpenTelemetry Collector processor's keys and defaults."""

from __future__ import annotations

import msgspec

from tailsampler.collector.durations import Duration

from .specs import PolicySpec


class DecisionCacheConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Kept and dropped decisions remembered for late spans; the reference's keys plus a TTL."""

    sampled_cache_size: int = 100_000
    non_sampled_cache_size: int = 1_000_000
    ttl: Duration = Duration(300.0)


class RecordingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """What kept traces carry about their sampling; all off, so kept bytes leave untouched.

    ``policy_attribute``: ``sampling.policy`` (the deciding policy) on every scope.
    ``sample_rate_attribute``: ``sampling.sample_rate`` (1-in-N) on every scope, when the deciding
    policy knows its rate (``probabilistic``, ``dynamic``).
    ``tracestate_threshold``: the OpenTelemetry ``ot=th:`` threshold in every span's tracestate
    when the rate is known, keeping a stricter threshold already there, so backends can
    extrapolate counts.
    """

    policy_attribute: bool = False
    sample_rate_attribute: bool = False
    tracestate_threshold: bool = False

    @property
    def enabled(self) -> bool:
        return self.policy_attribute or self.sample_rate_attribute or self.tracestate_threshold


class TailSamplingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The OpenTelemetry Collector tail_sampling processor's keys, with its defaults."""

    decision_wait: Duration = Duration(30.0)
    decision_wait_after_root_received: Duration = Duration(0.0)
    num_traces: int = 50_000
    expected_new_traces_per_sec: int = 0
    maximum_trace_size_bytes: int = 0
    sample_on_first_match: bool = False
    block_on_overflow: bool = False
    drop_pending_traces_on_shutdown: bool = False
    decision_cache: DecisionCacheConfig = msgspec.field(default_factory=DecisionCacheConfig)
    recording: RecordingConfig = msgspec.field(default_factory=RecordingConfig)
    policies: list[PolicySpec] = msgspec.field(default_factory=list)
