"""``ottl_condition``: keep traces where any span (``span``) or span event (``spanevent``)
satisfies any of the conditions (the reference's ``ottl.go``: conditions are ORed, spans are
checked before their events). Conditions are parsed once, at config load.

``error_mode: propagate`` (the default) turns a condition that cannot be evaluated into a policy
error, which the engine counts and skips; ``ignore`` treats it as false and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from .base import Decision, PolicyError
from .ottl import Condition, OttlEvalError, OttlSyntaxError, Target, parse_condition
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class OttlConditionConfig(msgspec.Struct, forbid_unknown_fields=True):
    error_mode: Literal["propagate", "ignore", "silent"] = "propagate"
    span: list[str] = msgspec.field(default_factory=list)
    spanevent: list[str] = msgspec.field(default_factory=list)


class OttlConditionSpec(SpecBase, tag="ottl_condition"):
    ottl_condition: OttlConditionConfig = msgspec.field(default_factory=OttlConditionConfig)


@dataclass
class OttlCondition:
    name: str
    span_conditions: list[Condition]
    event_conditions: list[Condition]
    propagate: bool

    def _any(self, conditions: list[Condition], target: Target) -> bool:
        for condition in conditions:
            try:
                if condition(target):
                    return True
            except OttlEvalError as exc:
                if self.propagate:
                    raise PolicyError(f"policy {self.name!r}: {exc}") from exc
        return False

    def evaluate(self, trace: TraceView) -> Decision:
        for ref in trace.spans:
            if self.span_conditions and self._any(self.span_conditions, Target(ref)):
                return Decision.SAMPLED
            if self.event_conditions:
                for event in ref.span.events:
                    if self._any(self.event_conditions, Target(ref, event)):
                        return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def parse_all(texts: list[str], context: str, path: str) -> list[Condition]:
    conditions = []
    for index, text in enumerate(texts):
        try:
            conditions.append(parse_condition(text, context))
        except OttlSyntaxError as exc:
            raise invalid(f"{path}[{index}]", f"cannot parse OTTL condition {text!r}: {exc}") from None
    return conditions


def build(spec: OttlConditionSpec, path: str, builder: Builder) -> OttlCondition:
    cfg = spec.ottl_condition
    base = f"{path}.ottl_condition"
    if not cfg.span and not cfg.spanevent:
        raise invalid(base, "expected at least one condition under span or spanevent")
    return OttlCondition(
        spec.name,
        parse_all(cfg.span, "span", f"{base}.span"),
        parse_all(cfg.spanevent, "spanevent", f"{base}.spanevent"),
        cfg.error_mode == "propagate",
    )


KINDS = (PolicyKind(OttlConditionSpec, build),)
