"""``string_attribute``: keep traces whose span or resource attribute ``key`` has one of
``values`` (the reference's ``string_tag_filter.go``).

Exact matching ignores empty values; with ``enabled_regex_matching`` each value is an
unanchored regular expression (Go's ``MatchString`` finds a match anywhere) and results are
remembered in an LRU of ``cache_max_size`` entries. As in the reference, a non-string attribute
reads as the empty string, and an empty span value never matches.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from .attributes import match_resource_or_span
from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

DEFAULT_CACHE_SIZE = 128


class StringAttributeConfig(msgspec.Struct, forbid_unknown_fields=True):
    key: str = ""
    values: list[str] = msgspec.field(default_factory=list)
    enabled_regex_matching: bool = False
    cache_max_size: int = 0
    invert_match: bool = False


class StringAttributeSpec(SpecBase, tag="string_attribute"):
    string_attribute: StringAttributeConfig = msgspec.field(default_factory=StringAttributeConfig)


@dataclass
class RegexMatcher:
    """Any of the patterns found in the value; results cached because values repeat a lot."""

    patterns: list[re.Pattern[str]]
    size: int
    cache: OrderedDict[str, bool] = field(default_factory=OrderedDict)

    def __call__(self, value: str) -> bool:
        hit = self.cache.get(value)
        if hit is not None:
            self.cache.move_to_end(value)
            return hit
        result = any(p.search(value) for p in self.patterns)
        self.cache[value] = result
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return result


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class StringAttribute:
    name: str
    key: str
    matches: Callable[[str], bool]
    invert: bool

    def evaluate(self, trace: TraceView) -> Decision:
        matches = self.matches
        return match_resource_or_span(
            trace,
            self.key,
            lambda value: matches(as_str(value)),
            lambda value: bool(as_str(value)) and matches(value),
            self.invert,
        )


def compile_patterns(values: list[str], path: str) -> list[re.Pattern[str]]:
    """Compile regexes at load time so a bad one is a config error naming its index."""
    patterns = []
    for index, value in enumerate(values):
        try:
            patterns.append(re.compile(value))
        except re.error as exc:
            raise invalid(f"{path}[{index}]", f"invalid regular expression {value!r}: {exc}") from None
    return patterns


def build(spec: StringAttributeSpec, path: str, builder: Builder) -> StringAttribute:
    cfg = spec.string_attribute
    base = f"{path}.string_attribute"
    if not cfg.key:
        raise invalid(f"{base}.key", "the attribute key is required")
    if not cfg.values:
        raise invalid(f"{base}.values", "expected at least one value")
    matches: Callable[[str], bool]
    if cfg.enabled_regex_matching:
        size = cfg.cache_max_size if cfg.cache_max_size > 0 else DEFAULT_CACHE_SIZE
        matches = RegexMatcher(compile_patterns(cfg.values, f"{base}.values"), size)
    else:
        matches = frozenset(v for v in cfg.values if v).__contains__
    return StringAttribute(spec.name, cfg.key, matches, cfg.invert_match)


KINDS = (PolicyKind(StringAttributeSpec, build),)
