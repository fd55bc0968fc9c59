"""Combining the policies' votes into one decision, as the reference's ``makeDecision`` does
(``processor.go``): dropping policies are asked first; a policy that fails is counted and
skipped; evaluation stops at the first ``DROPPED`` vote, or at the first ``SAMPLED`` vote when
``sample_on_first_match`` is set. Any ``DROPPED`` vote drops the trace; otherwise any
``SAMPLED`` vote keeps it; otherwise it is not sampled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect

from .base import Decision, Policy, PolicyContext
from .kind import Builder, tag_of
from .registry import KINDS
from .specs import PolicySpec
from .trace import TraceView
from tailsampler.common.verdict import DROPPED, Verdict

log = logging.getLogger(__name__)

# an Enum member read as a class attribute costs a descriptor call each time; decide runs per trace
_ERROR, _DROPPED, _SAMPLED = Decision.ERROR, Decision.DROPPED, Decision.SAMPLED


def sample_rate_of(policy: Policy) -> float | None:
    """The 1-in-N rate a policy's latest ``SAMPLED`` vote was taken at, if it knows one."""
    return getattr(policy, "sample_rate", None)


@dataclass(slots=True)
class Evaluation:
    """The engine's answer for one trace: the verdict that travels on, and every policy's vote
    (counted in metrics, shown by ``tailsampler evaluate``)."""

    verdict: Verdict
    votes: dict[str, Decision]

    @property
    def keep(self) -> bool:
        return self.verdict.keep

    @property
    def policy(self) -> str | None:
        return self.verdict.policy

    @property
    def sample_rate(self) -> float | None:
        return self.verdict.sample_rate


class Engine:
    def __init__(self, policies: list[Policy], drops: list[bool], sample_on_first_match: bool) -> None:
        self.policies = policies
        self._order = [p for p, d in zip(policies, drops) if d] + [p for p, d in zip(policies, drops) if not d]
        self.sample_on_first_match = sample_on_first_match

    @property
    def policy_names(self) -> list[str]:
        return [p.name for p in self.policies]

    def decide(self, trace: TraceView) -> Evaluation:
        votes: dict[str, Decision] = {}
        sampled: Policy | None = None
        for policy in self._order:
            try:
                decision = policy.evaluate(trace)
            except Exception:
                log.debug("policy %r failed on trace %s", policy.name, trace.trace_id.hex(), exc_info=True)
                decision = _ERROR
            votes[policy.name] = decision
            if decision is _DROPPED:
                return Evaluation(Verdict(False, policy.name), votes)
            if decision is _SAMPLED:
                if sampled is None:
                    sampled = policy
                if self.sample_on_first_match:
                    break
        if sampled is not None:
            return Evaluation(Verdict(True, sampled.name, sample_rate_of(sampled)), votes)
        return Evaluation(DROPPED, votes)


class EngineSettings(Protocol):
    """What the engine is built from: the ``tail_sampling`` section's policies and how to combine them."""

    policies: list[PolicySpec]
    sample_on_first_match: bool


def build_engine(settings: EngineSettings, context: PolicyContext) -> Engine:
    """Build every configured policy; semantic problems raise one ``ConfigError`` naming each
    key path (``tail_sampling.policies[2].latency.threshold_ms``)."""
    policies = Builder(context, KINDS).build_all(settings.policies, "tail_sampling.policies")
    drops = [KINDS[tag_of(spec)].drops for spec in settings.policies]
    return Engine(policies, drops, settings.sample_on_first_match)


def policy_problems(items: Sequence[Any], path: str, context: PolicyContext) -> list[Problem]:
    """The semantic problems of a policy list as written in a config file: each entry that
    decodes is built, at its own index; entries that do not decode are left to the decoder's
    own report."""
    unreported: list[Problem] = []
    specs = [(i, collect(item, PolicySpec, f"{path}[{i}]", unreported)) for i, item in enumerate(items)]
    try:
        Builder(context, KINDS).build_indexed([(i, s) for i, s in specs if s is not INVALID], path)
    except ConfigError as exc:
        return list(exc.problems)
    return []
