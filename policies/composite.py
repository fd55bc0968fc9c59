"""``composite``: the first sub-policy that samples decides, within its share of
``max_total_spans_per_second`` (the reference's ``composite.go`` / ``composite_helper.go``).

Sub-policies are asked in ``policy_order`` (then any not listed, in list order). The reference
evaluates in list order and ignores ``policy_order`` (open-telemetry/opentelemetry-collector-contrib
issue 36955); this follows its documentation instead. A ``rate_allocation`` entry gives a
sub-policy ``percent``% of the total (``percent: 0`` gives an equal share, as in the reference);
sub-policies without an entry share what the entries leave, which is how the reference's README
says an ``always_sample`` sub-policy "fills the remaining capacity" (in the reference they get 0).
When the deciding sub-policy is out of budget the trace is not sampled and no later sub-policy
is asked, as in the reference. Budgets are token buckets from ``PolicyContext.token_bucket`` (one
second of capacity), so agents sharing Redis share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

import tailsampler.policies  # noqa: F401  (sub-policy annotations name tailsampler.policies.specs, resolved at first decode)

from .base import Decision, Policy, TokenBucket
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class RateAllocation(msgspec.Struct, forbid_unknown_fields=True):
    policy: str
    percent: int = 0


class CompositeConfig(msgspec.Struct, forbid_unknown_fields=True):
    max_total_spans_per_second: int = 0
    policy_order: list[str] = msgspec.field(default_factory=list)
    composite_sub_policy: "list[tailsampler.policies.specs.PolicySpec]" = msgspec.field(default_factory=list)
    rate_allocation: list[RateAllocation] = msgspec.field(default_factory=list)


class CompositeSpec(SpecBase, tag="composite"):
    composite: CompositeConfig = msgspec.field(default_factory=CompositeConfig)


@dataclass
class Budgeted:
    policy: Policy
    bucket: TokenBucket | None  # None: no budget at all


@dataclass
class Composite:
    name: str
    subs: list[Budgeted]

    def evaluate(self, trace: TraceView) -> Decision:
        for sub in self.subs:
            if sub.policy.evaluate(trace) is Decision.SAMPLED:
                if sub.bucket is not None and sub.bucket.take(trace.span_count):
                    return Decision.SAMPLED
                return Decision.NOT_SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: CompositeSpec, path: str, builder: Builder) -> Composite:
    cfg = spec.composite
    base = f"{path}.composite"
    total = cfg.max_total_spans_per_second
    if total <= 0:
        raise invalid(f"{base}.max_total_spans_per_second", f"must be greater than 0, got {total}")
    if not cfg.composite_sub_policy:
        raise invalid(f"{base}.composite_sub_policy", "expected at least one sub-policy")
    policies_ = builder.build_all(cfg.composite_sub_policy, f"{base}.composite_sub_policy")
    by_name = {p.name: p for p in policies_}

    for index, name in enumerate(cfg.policy_order):
        if name not in by_name:
            raise invalid(f"{base}.policy_order[{index}]", f"no sub-policy named {name!r} in composite_sub_policy")
    order = list(dict.fromkeys(cfg.policy_order)) + [p.name for p in policies_ if p.name not in cfg.policy_order]

    rates: dict[str, float] = {}
    for index, alloc in enumerate(cfg.rate_allocation):
        key = f"{base}.rate_allocation[{index}]"
        if alloc.policy not in by_name:
            raise invalid(f"{key}.policy", f"no sub-policy named {alloc.policy!r} in composite_sub_policy")
        if not 0 <= alloc.percent <= 100:
            raise invalid(f"{key}.percent", f"must be between 0 and 100, got {alloc.percent}")
        rates[alloc.policy] = total * alloc.percent / 100 if alloc.percent else total / len(policies_)
    allocated = sum(rates.values())
    if allocated > total:
        raise invalid(f"{base}.rate_allocation", f"allocations add up to {allocated:g} spans/s, more than max_total_spans_per_second ({total})")

    remainder = total - allocated
    shared = builder.context.token_bucket(f"{base}:{spec.name}:*", remainder, remainder) if remainder > 0 else None
    subs = []
    for name in order:
        rate = rates.get(name)
        if rate is None:
            bucket = shared
        else:
            bucket = builder.context.token_bucket(f"{base}:{spec.name}:{name}", rate, rate) if rate > 0 else None
        subs.append(Budgeted(by_name[name], bucket))
    return Composite(spec.name, subs)


KINDS = (PolicyKind(CompositeSpec, build),)
