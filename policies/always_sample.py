"""``always_sample``: keep every trace (the reference's ``always_sample.go``)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase
from .trace import TraceView


class AlwaysSampleSpec(SpecBase, tag="always_sample"):
    pass


@dataclass
class AlwaysSample:
    name: str

    def evaluate(self, trace: TraceView) -> Decision:
        return Decision.SAMPLED


def build(spec: AlwaysSampleSpec, path: str, builder: Builder) -> AlwaysSample:
    return AlwaysSample(spec.name)


KINDS = (PolicyKind(AlwaysSampleSpec, build),)
