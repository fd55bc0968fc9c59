"""Combining the policies' votes into one decision, as the reference's ``makeDecision`` does
(``processor.go``): dropping policies are asked first; a policy that fails is counted and
skipped; evaluation stops at the first ``DROPPED`` vote, or at the first ``SAMPLED`` vote when
``sample_on_first_match`` is set. Any ``DROPPED`` vote drops the trace; otherwise any
``SAMPLED`` vote keeps it; otherwise it is not sampled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import Decision, Policy, PolicyContext, Verdict
from .registry import KINDS, Builder
from .trace import TraceView

if TYPE_CHECKING:
    from .config import TailSamplingConfig

log = logging.getLogger(__name__)

# an Enum member read as a class attribute costs a descriptor call each time; decide runs per trace
_ERROR, _DROPPED, _SAMPLED = Decision.ERROR, Decision.DROPPED, Decision.SAMPLED


def sample_rate_of(policy: Policy) -> float | None:
    """The 1-in-N rate a policy's latest ``SAMPLED`` vote was taken at, if it knows one."""
    return getattr(policy, "sample_rate", None)


class Engine:
    def __init__(self, policies: list[Policy], drops: list[bool], sample_on_first_match: bool) -> None:
        self.policies = policies
        self._order = [p for p, d in zip(policies, drops) if d] + [p for p, d in zip(policies, drops) if not d]
        self.sample_on_first_match = sample_on_first_match
        self.errors = 0

    @property
    def policy_names(self) -> list[str]:
        return [p.name for p in self.policies]

    def decide(self, trace: TraceView) -> Verdict:
        votes: dict[str, Decision] = {}
        sampled: Policy | None = None
        dropped: Policy | None = None
        for policy in self._order:
            try:
                decision = policy.evaluate(trace)
            except Exception:
                log.debug("policy %r failed on trace %s", policy.name, trace.trace_id.hex(), exc_info=True)
                decision = _ERROR
            votes[policy.name] = decision
            if decision is _ERROR:
                self.errors += 1
            elif decision is _DROPPED:
                dropped = policy
                break
            elif decision is _SAMPLED:
                if sampled is None:
                    sampled = policy
                if self.sample_on_first_match:
                    break
        if dropped is not None:
            return Verdict(False, dropped.name, votes)
        if sampled is not None:
            return Verdict(True, sampled.name, votes, sample_rate_of(sampled))
        return Verdict(False, None, votes)


def build_engine(ts: "TailSamplingConfig", context: PolicyContext) -> Engine:
    """Build every configured policy; semantic problems raise ``ConfigError`` naming the key path."""
    builder = Builder(context)
    policies = builder.build_all(ts.policies, "tail_sampling.policies")
    drops = [KINDS[type(spec).__struct_config__.tag].drops for spec in ts.policies]
    return Engine(policies, drops, ts.sample_on_first_match)
