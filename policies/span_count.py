"""``span_count``: keep traces with ``min_spans`` to ``max_spans`` spans, inclusive;
``max_spans: 0`` means no upper limit (the reference's ``span_count_sampler.go``)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class SpanCountConfig(msgspec.Struct, forbid_unknown_fields=True):
    min_spans: int = 0
    max_spans: int = 0


class SpanCountSpec(SpecBase, tag="span_count"):
    span_count: SpanCountConfig = msgspec.field(default_factory=SpanCountConfig)


@dataclass
class SpanCount:
    name: str
    min_spans: int
    max_spans: int

    def evaluate(self, trace: TraceView) -> Decision:
        count = trace.span_count
        if count >= self.min_spans and (self.max_spans == 0 or count <= self.max_spans):
            return Decision.SAMPLED
        return Decision.NOT_SAMPLED


def build(spec: SpanCountSpec, path: str, builder: Builder) -> SpanCount:
    cfg = spec.span_count
    base = f"{path}.span_count"
    if cfg.min_spans < 0:
        raise invalid(f"{base}.min_spans", "must be 0 or positive")
    if cfg.max_spans < 0:
        raise invalid(f"{base}.max_spans", "must be 0 (no upper limit) or positive")
    if cfg.max_spans and cfg.max_spans < cfg.min_spans:
        raise invalid(f"{base}.max_spans", f"must be 0 or at least min_spans ({cfg.min_spans}), got {cfg.max_spans}")
    return SpanCount(spec.name, cfg.min_spans, cfg.max_spans)


KINDS = (PolicyKind(SpanCountSpec, build),)
