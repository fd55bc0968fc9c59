"""``trace_flags``: keep traces where any span carries the W3C sampled flag (bit 0 of
``Span.flags``), i.e. an upstream head sampler already chose it (the reference's ``trace_flags.go``)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase
from .trace import TraceView

class TraceFlagsSpec(SpecBase, tag="trace_flags"):
    pass


@dataclass
class TraceFlags:
    name: str

    def evaluate(self, trace: TraceView) -> Decision:
        if trace.sampled:
            return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: TraceFlagsSpec, path: str, builder: Builder) -> TraceFlags:
    return TraceFlags(spec.name)


KINDS = (PolicyKind(TraceFlagsSpec, build),)
