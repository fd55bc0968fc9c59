"""Grouping traces by what they are (service, route, status class) for per-key sampling.

A trace's key is read from its root span (the first span when the root has not arrived):
each field is a span attribute, else a resource attribute of that span; ``status.code`` is
``ERROR`` when any span failed, else the root's code name. With ``status_class`` an integer
in 100..599 reads as its class (``5xx``) so one key stands for all server errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .trace import TraceView, attribute

_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
_MISSING = "-"


@dataclass(frozen=True)
class KeyBuilder:
    fields: tuple[str, ...]
    status_class: bool = False

    def _text(self, value: object) -> str:
        if value is None:
            return _MISSING
        if self.status_class and isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return f"{value // 100}xx"
        return str(value)

    def key(self, trace: TraceView) -> str:
        ref = trace.root or (trace.spans[0] if trace.spans else None)
        if ref is None or not self.fields:
            return ""
        parts = []
        for field in self.fields:
            if field == "status.code":
                failed = any(r.span.status.code == 2 for r in trace.spans)
                parts.append("ERROR" if failed else _STATUS_NAMES.get(ref.span.status.code, "UNSET"))
                continue
            value = attribute(ref.span.attributes, field)
            if value is None:
                value = attribute(ref.resource.attributes, field)
            parts.append(self._text(value))
        return "\x1f".join(parts)
