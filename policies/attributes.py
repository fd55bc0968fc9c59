"""How the attribute policies look at a trace: span attributes and resource attributes.

Mirrors the reference's ``hasResourceOrSpanWithCondition`` / ``invertHasResourceOrSpanWithCondition``
(``internal/sampling/util.go``): a plain match samples when any resource or span carries a
matching value; an inverted match samples only when none does (a missing key never matches).
"""

from __future__ import annotations

from typing import Any, Callable

from .base import Decision
from .trace import TraceView, attribute

Matcher = Callable[[Any], bool]


def match_resource_or_span(
    trace: TraceView, key: str, on_resource: Matcher, on_span: Matcher, invert: bool
) -> Decision:
    """``on_resource`` / ``on_span`` receive the present value of ``key`` and say if it matches."""
    seen_resources: set[int] = set()
    found = False
    for ref in trace.spans:
        if id(ref.resource) not in seen_resources:
            seen_resources.add(id(ref.resource))
            value = attribute(ref.resource.attributes, key)
            if value is not None and on_resource(value):
                found = True
                break
        value = attribute(ref.span.attributes, key)
        if value is not None and on_span(value):
            found = True
            break
    if found != invert:
        return Decision.SAMPLED
    return Decision.NOT_SAMPLED


def match_value(trace: TraceView, key: str, matches: Matcher, invert: bool) -> Decision:
    """The common case: the same test for resource and span values."""
    return match_resource_or_span(trace, key, matches, matches, invert)
