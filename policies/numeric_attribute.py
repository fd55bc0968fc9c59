"""``numeric_attribute``: keep traces whose span or resource attribute ``key`` is an integer in
``[min_value, max_value]`` (the reference's ``numeric_tag_filter.go``: 0 means "no bound" on
either side, at least one bound is required).

The reference reads values with ``Value.Int()``, so only integer attributes take part here;
any other type never matches (and never blocks an inverted match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .attributes import match_value
from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class NumericAttributeConfig(msgspec.Struct, forbid_unknown_fields=True):
    key: str = ""
    min_value: int = 0
    max_value: int = 0
    invert_match: bool = False


class NumericAttributeSpec(SpecBase, tag="numeric_attribute"):
    numeric_attribute: NumericAttributeConfig = msgspec.field(default_factory=NumericAttributeConfig)


@dataclass
class NumericAttribute:
    name: str
    key: str
    low: float
    high: float
    invert: bool

    def _in_range(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def evaluate(self, trace: TraceView) -> Decision:
        return match_value(trace, self.key, self._in_range, self.invert)


def build(spec: NumericAttributeSpec, path: str, builder: Builder) -> NumericAttribute:
    cfg = spec.numeric_attribute
    base = f"{path}.numeric_attribute"
    if not cfg.key:
        raise invalid(f"{base}.key", "the attribute key is required")
    if cfg.min_value == 0 and cfg.max_value == 0:
        raise invalid(base, "at least one of min_value or max_value must be set (0 means unset)")
    if cfg.min_value and cfg.max_value and cfg.min_value > cfg.max_value:
        raise invalid(
            f"{base}.max_value",
            f"must be greater than or equal to min_value ({cfg.min_value}), got {cfg.max_value}",
        )
    low = cfg.min_value if cfg.min_value else float("-inf")
    high = cfg.max_value if cfg.max_value else float("inf")
    return NumericAttribute(spec.name, cfg.key, low, high, cfg.invert_match)


KINDS = (PolicyKind(NumericAttributeSpec, build),)
