"""``boolean_attribute``: keep traces whose span or resource attribute ``key`` is the boolean
``value`` (the reference's ``boolean_tag_filter.go``; ``invert_match`` keeps only when none is)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .attributes import match_value
from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView


class BooleanAttributeConfig(msgspec.Struct, forbid_unknown_fields=True):
    key: str = ""
    value: bool = False
    invert_match: bool = False


class BooleanAttributeSpec(SpecBase, tag="boolean_attribute"):
    boolean_attribute: BooleanAttributeConfig = msgspec.field(default_factory=BooleanAttributeConfig)


@dataclass
class BooleanAttribute:
    name: str
    key: str
    value: bool
    invert: bool

    def _matches(self, value: Any) -> bool:
        return isinstance(value, bool) and value == self.value

    def evaluate(self, trace: TraceView) -> Decision:
        return match_value(trace, self.key, self._matches, self.invert)


def build(spec: BooleanAttributeSpec, path: str, builder: Builder) -> BooleanAttribute:
    cfg = spec.boolean_attribute
    if not cfg.key:
        raise invalid(f"{path}.boolean_attribute.key", "the attribute key is required")
    return BooleanAttribute(spec.name, cfg.key, cfg.value, cfg.invert_match)


KINDS = (PolicyKind(BooleanAttributeSpec, build),)
