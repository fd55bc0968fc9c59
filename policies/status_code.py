"""``status_code``: keep traces where any span has one of the listed status codes
(the reference's ``status_code.go``; codes ``OK``, ``ERROR``, ``UNSET``)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .base import Decision
from .kind import Builder, PolicyKind, SpecBase, invalid
from .trace import TraceView

STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}


class StatusCodeConfig(msgspec.Struct, forbid_unknown_fields=True):
    status_codes: list[str] = msgspec.field(default_factory=list)


class StatusCodeSpec(SpecBase, tag="status_code"):
    status_code: StatusCodeConfig = msgspec.field(default_factory=StatusCodeConfig)


@dataclass
class StatusCode:
    name: str
    codes: frozenset[int]

    def evaluate(self, trace: TraceView) -> Decision:
        if self.codes.isdisjoint(trace.status_codes):
            return Decision.NOT_SAMPLED
        return Decision.SAMPLED


def build(spec: StatusCodeSpec, path: str, builder: Builder) -> StatusCode:
    names = spec.status_code.status_codes
    key = f"{path}.status_code.status_codes"
    if not names:
        raise invalid(key, "expected at least one of OK, ERROR, UNSET")
    codes = set()
    for index, name in enumerate(names):
        if name not in STATUS_CODES:
            raise invalid(f"{key}[{index}]", f"unknown status code {name!r}, expected OK, ERROR or UNSET")
        codes.add(STATUS_CODES[name])
    return StatusCode(spec.name, frozenset(codes))


KINDS = (PolicyKind(StatusCodeSpec, build),)
