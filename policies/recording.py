"""Optional rewrite of kept traces so backends know why and at what rate they were kept.

Only the decision loop calls this, only for kept traces, and only when
``tail_sampling.recording`` turns something on; otherwise the bytes leave as they came.
Tracestate follows the OpenTelemetry probability-sampling spec: ``ot=th:<hex>`` with
threshold ``T = (1 - p) * 2^56``; a later sampler may only raise ``th`` (keep the stricter one)
and leaves the other ``ot`` sub-keys, such as ``rv``, alone.
"""

from __future__ import annotations

from fractions import Fraction

import msgspec
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.common.verdict import Verdict


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


POLICY_ATTRIBUTE = "sampling.policy"
RATE_ATTRIBUTE = "sampling.sample_rate"
_MAX_THRESHOLD = 1 << 56


def threshold_for(sample_rate: float) -> int:
    """``T = (1 - p) * 2^56`` for ``p = 1 / sample_rate``, rounded to the nearest unit."""
    exact = (1 - 1 / Fraction(sample_rate)) * _MAX_THRESHOLD
    return min(_MAX_THRESHOLD - 1, max(0, round(exact)))


def encode_threshold(threshold: int) -> str:
    return f"{threshold:014x}".rstrip("0") or "0"


def decode_threshold(text: str) -> int | None:
    if not 1 <= len(text) <= 14:
        return None
    try:
        return int(text.ljust(14, "0"), 16)
    except ValueError:
        return None


def with_threshold(tracestate: str, threshold: int) -> str:
    """Put ``th`` into the ``ot`` entry (moved to the front, as W3C asks of a modified entry)."""
    members = [m.strip() for m in tracestate.split(",") if m.strip()] if tracestate else []
    ot_parts: list[str] = []
    others: list[str] = []
    for member in members:
        key, _, value = member.partition("=")
        if key == "ot":
            ot_parts = [p for p in value.split(";") if p]
        else:
            others.append(member)
    incoming = None
    kept: list[str] = []
    for part in ot_parts:
        if part.startswith("th:"):
            incoming = decode_threshold(part[3:])
        else:
            kept.append(part)
    if incoming is not None and incoming > threshold:
        threshold = incoming
    ot = ";".join([f"th:{encode_threshold(threshold)}", *kept])
    return ",".join([f"ot={ot}", *others])


def _set_attribute(attributes, key: str, value: AnyValue) -> None:
    for kv in attributes:
        if kv.key == key:
            kv.value.CopyFrom(value)
            return
    attributes.append(KeyValue(key=key, value=value))


def record(data: bytes, verdict: Verdict, options: RecordingConfig) -> bytes:
    """The kept trace's bytes, with what ``options`` asks recorded on its scopes and spans."""
    rate = verdict.sample_rate
    want_policy = options.policy_attribute and verdict.policy is not None
    want_rate = options.sample_rate_attribute and rate is not None
    want_threshold = options.tracestate_threshold and rate is not None
    if not (want_policy or want_rate or want_threshold):
        return data
    traces = TracesData.FromString(data)
    threshold = threshold_for(rate) if want_threshold and rate is not None else 0
    for rs in traces.resource_spans:
        for ss in rs.scope_spans:
            if want_policy:
                _set_attribute(ss.scope.attributes, POLICY_ATTRIBUTE, AnyValue(string_value=verdict.policy))
            if want_rate:
                _set_attribute(ss.scope.attributes, RATE_ATTRIBUTE, AnyValue(double_value=rate))
            if want_threshold:
                for span in ss.spans:
                    span.trace_state = with_threshold(span.trace_state, threshold)
    return traces.SerializeToString()
