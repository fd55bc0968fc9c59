"""``trace_state``: keep traces where a span's W3C tracestate has ``key`` set to one of
``values`` (the reference's ``trace_state_filter.go``; exact match, first span that parses wins)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

_MAX_KEY_LENGTH = 256
_MAX_VALUE_LENGTH = 256


class TraceStateConfig(msgspec.Struct, forbid_unknown_fields=True):
    key: str = ""
    values: list[str] = msgspec.field(default_factory=list)


class TraceStateSpec(SpecBase, tag="trace_state"):
    trace_state: TraceStateConfig = msgspec.field(default_factory=TraceStateConfig)


def tracestate_get(tracestate: str, key: str) -> str | None:
    for member in tracestate.split(","):
        k, sep, v = member.strip().partition("=")
        if sep and k == key:
            return v
    return None


@dataclass
class TraceState:
    name: str
    key: str
    values: frozenset[str]

    def evaluate(self, trace: TraceView) -> Decision:
        for trace_state in trace.trace_states:
            value = tracestate_get(trace_state, self.key)
            if value is not None and value in self.values:
                return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: TraceStateSpec, path: str, builder: Builder) -> TraceState:
    cfg = spec.trace_state
    base = f"{path}.trace_state"
    if not cfg.key or len(cfg.key) > _MAX_KEY_LENGTH:
        raise invalid(f"{base}.key", f"a tracestate key of 1 to {_MAX_KEY_LENGTH} characters is required")
    if not cfg.values:
        raise invalid(f"{base}.values", "expected at least one value")
    for index, value in enumerate(cfg.values):
        if len(value) + len(cfg.key) + 1 > _MAX_VALUE_LENGTH:
            raise invalid(f"{base}.values[{index}]", f"key=value must fit in {_MAX_VALUE_LENGTH} characters")
    return TraceState(spec.name, cfg.key, frozenset(cfg.values))


KINDS = (PolicyKind(TraceStateSpec, build),)
