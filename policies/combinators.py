"""``and``, ``not`` and ``drop``: policies made of other policies (the reference's ``and.go``,
``not.go``, ``drop.go``).

``and`` samples only when every sub-policy samples (it stops at the first that does not);
``not`` swaps sampled and not sampled; ``drop`` votes ``DROPPED`` when every sub-policy samples,
and the engine asks dropping policies before all others. A failing sub-policy fails the whole.
Sub-policies may be of any type here (the reference allows only leaf types).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

import tailsampler.policies  # noqa: F401  (sub-policy annotations name tailsampler.policies.specs, resolved at first decode)

from .base import Decision, Policy
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class AndConfig(msgspec.Struct, forbid_unknown_fields=True):
    and_sub_policy: "list[tailsampler.policies.specs.PolicySpec]" = msgspec.field(default_factory=list)


class DropConfig(msgspec.Struct, forbid_unknown_fields=True):
    drop_sub_policy: "list[tailsampler.policies.specs.PolicySpec]" = msgspec.field(default_factory=list)


class NotConfig(msgspec.Struct, forbid_unknown_fields=True):
    not_sub_policy: "tailsampler.policies.specs.PolicySpec | None" = None


class AndSpec(SpecBase, tag="and"):
    and_: AndConfig = msgspec.field(default_factory=AndConfig, name="and")


class DropSpec(SpecBase, tag="drop"):
    drop: DropConfig = msgspec.field(default_factory=DropConfig)


class NotSpec(SpecBase, tag="not"):
    not_: NotConfig = msgspec.field(default_factory=NotConfig, name="not")


def all_sample(subs: list[Policy], trace: TraceView) -> bool:
    return all(sub.evaluate(trace) is Decision.SAMPLED for sub in subs)


@dataclass
class And:
    name: str
    subs: list[Policy]

    def evaluate(self, trace: TraceView) -> Decision:
        return Decision.SAMPLED if all_sample(self.subs, trace) else Decision.NOT_SAMPLED

    @property
    def sample_rate(self) -> float | None:
        """Independent sub-samplers compound: a 10% sampler inside ``and`` keeps 1 in 10."""
        rates = [r for r in (getattr(sub, "sample_rate", None) for sub in self.subs) if r is not None]
        return math.prod(rates) if rates else None


@dataclass
class Drop:
    name: str
    subs: list[Policy]

    def evaluate(self, trace: TraceView) -> Decision:
        return Decision.DROPPED if all_sample(self.subs, trace) else Decision.NOT_SAMPLED


@dataclass
class Not:
    name: str
    sub: Policy

    def evaluate(self, trace: TraceView) -> Decision:
        decision = self.sub.evaluate(trace)
        if decision is Decision.SAMPLED:
            return Decision.NOT_SAMPLED
        if decision is Decision.NOT_SAMPLED:
            return Decision.SAMPLED
        return decision


def sub_policies(specs: list, path: str, builder: Builder) -> list[Policy]:
    if not specs:
        raise invalid(path, "expected at least one sub-policy")
    return builder.build_all(specs, path)


def build_and(spec: AndSpec, path: str, builder: Builder) -> And:
    return And(spec.name, sub_policies(spec.and_.and_sub_policy, f"{path}.and.and_sub_policy", builder))


def build_drop(spec: DropSpec, path: str, builder: Builder) -> Drop:
    return Drop(spec.name, sub_policies(spec.drop.drop_sub_policy, f"{path}.drop.drop_sub_policy", builder))


def build_not(spec: NotSpec, path: str, builder: Builder) -> Not:
    key = f"{path}.not.not_sub_policy"
    if spec.not_.not_sub_policy is None:
        raise invalid(key, "a sub-policy is required")
    return Not(spec.name, builder.build(spec.not_.not_sub_policy, key))


KINDS = (
    PolicyKind(AndSpec, build_and),
    PolicyKind(NotSpec, build_not),
    PolicyKind(DropSpec, build_drop, drops=True),
)
