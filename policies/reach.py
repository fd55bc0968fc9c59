"""What a list of policies can ever keep, read from their config alone.

The engine keeps a trace when no dropping policy drops it and some other policy samples it. A list
whose sampling policies can never sample (``probabilistic`` at 0%, ``not`` of ``always_sample``, an
``and`` holding one of those), or with a ``drop`` policy that drops every trace, keeps nothing: a
config like that is valid but almost certainly a mistake, so it earns a warning. The rules are
conservative: only what the config proves is reported.
"""

from __future__ import annotations

from typing import Any

from .combinators import AndSpec, DropSpec, NotSpec
from .probabilistic import ProbabilisticSpec
from .always_sample import AlwaysSampleSpec


def never_samples(spec: Any) -> bool:
    """The policy can be proven never to vote SAMPLED."""
    if isinstance(spec, ProbabilisticSpec):
        return spec.probabilistic.sampling_percentage <= 0
    if isinstance(spec, DropSpec):
        return True  # it votes DROPPED or NOT_SAMPLED
    if isinstance(spec, AndSpec):
        return any(never_samples(sub) for sub in spec.and_.and_sub_policy)
    if isinstance(spec, NotSpec):
        return spec.not_.not_sub_policy is not None and always_samples(spec.not_.not_sub_policy)
    return False


def always_samples(spec: Any) -> bool:
    """The policy can be proven to vote SAMPLED on every trace."""
    if isinstance(spec, AlwaysSampleSpec):
        return True
    if isinstance(spec, ProbabilisticSpec):
        return spec.probabilistic.sampling_percentage >= 100
    if isinstance(spec, AndSpec):
        return bool(spec.and_.and_sub_policy) and all(always_samples(sub) for sub in spec.and_.and_sub_policy)
    if isinstance(spec, NotSpec):
        return spec.not_.not_sub_policy is not None and never_samples(spec.not_.not_sub_policy)
    return False


def never_keeps(specs: list[Any]) -> str | None:
    """Why the list can keep no trace at all, or None when it may keep some."""
    for spec in specs:
        if isinstance(spec, DropSpec) and spec.drop.drop_sub_policy and all(
            always_samples(sub) for sub in spec.drop.drop_sub_policy
        ):
            return f"policy {spec.name!r} drops every trace"
    if specs and all(never_samples(spec) for spec in specs):
        names = ", ".join(repr(spec.name) for spec in specs)
        return f"none of the policies ({names}) can ever sample a trace"
    return None
