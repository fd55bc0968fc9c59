"""Policy types by name: each policy module declares its config Struct and a builder here.

Adding a policy type is adding one module and one line in ``_MODULES``; the tagged union of
config structs (``policies.PolicySpec``) and the engine's builder both read this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from tailsampler.collector.errors import ConfigError

from .base import Policy, PolicyContext


class SpecBase(msgspec.Struct, forbid_unknown_fields=True, tag_field="type"):
    """Fields every policy has, whatever its type: its name, and (as the tag) its ``type``."""

    name: str


def invalid(path: str, problem: str) -> ConfigError:
    """A semantic config error, worded ``<key path>: <problem>``; the loader prefixes the file."""
    return ConfigError(f"{path}: {problem}")


@dataclass
class Builder:
    """Turns config structs into policies; passed to every builder so combinators can recurse."""

    context: PolicyContext

    def build(self, spec: SpecBase, path: str) -> Policy:
        if not spec.name:
            raise invalid(f"{path}.name", "a policy needs a non-empty name")
        kind = KINDS[type(spec).__struct_config__.tag]
        return kind.build(spec, path, self)

    def build_all(self, specs: list[Any], path: str) -> list[Policy]:
        """Build a list of sub-policies whose names must be unique, as the reference requires."""
        seen: set[str] = set()
        policies = []
        for index, spec in enumerate(specs):
            if spec.name in seen:
                raise invalid(f"{path}[{index}].name", f"duplicate policy name {spec.name!r}")
            seen.add(spec.name)
            policies.append(self.build(spec, f"{path}[{index}]"))
        return policies


@dataclass(frozen=True)
class PolicyKind:
    """One policy type: its config Struct (tagged with the type name) and how to build it."""

    spec: type[SpecBase]
    build: Callable[[Any, str, Builder], Policy]
    drops: bool = False  # the engine evaluates dropping policies before all others


_MODULES = (
    "always_sample",
    "latency",
    "status_code",
    "probabilistic",
    "string_attribute",
    "numeric_attribute",
    "boolean_attribute",
    "trace_state",
    "trace_flags",
    "span_count",
    "ottl_condition",
    "rate_limiting",
    "combinators",
    "composite",
    "dynamic",
    "throughput",
)


def _load() -> dict[str, PolicyKind]:
    kinds: dict[str, PolicyKind] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"tailsampler.policies.{module_name}")
        for kind in module.KINDS:
            kinds[kind.spec.__struct_config__.tag] = kind
    return kinds


KINDS: dict[str, PolicyKind] = _load()
