"""What every policy module declares: its config struct, and how to build the policy from it.

Builders check the meaning of a config (ranges, references, regexes) beyond its shape, and report
problems as ``ConfigError`` naming the key path; ``Builder.build_all`` gathers the problems of
every policy in a list before giving up, so one bad policy does not hide another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from tailsampler.common.errors import ConfigError, Problem

from .base import Policy, PolicyContext


class SpecBase(msgspec.Struct, forbid_unknown_fields=True, tag_field="type"):
    """Fields every policy has, whatever its type: its name, and (as the tag) its ``type``."""

    name: str


def invalid(path: str, problem: str) -> ConfigError:
    """A semantic config error at ``path``; the loader adds the file."""
    return ConfigError(Problem(path, problem))


@dataclass(frozen=True)
class PolicyKind:
    """One policy type: its config Struct (tagged with the type name) and how to build it."""

    spec: type[SpecBase]
    build: Callable[[Any, str, "Builder"], Policy]
    drops: bool = False  # the engine evaluates dropping policies before all others


def tag_of(spec: SpecBase) -> str:
    return str(type(spec).__struct_config__.tag)


@dataclass
class Builder:
    """Turns config structs into policies; passed to every builder so combinators can recurse."""

    context: PolicyContext
    kinds: dict[str, PolicyKind]

    def build(self, spec: SpecBase, path: str) -> Policy:
        if not spec.name:
            raise invalid(f"{path}.name", "a policy needs a non-empty name")
        return self.kinds[tag_of(spec)].build(spec, path, self)

    def build_all(self, specs: list[Any], path: str) -> list[Policy]:
        """Build a list of sub-policies whose names must be unique, as the reference requires."""
        return self.build_indexed(enumerate(specs), path)

    def build_indexed(self, specs: Iterable[tuple[int, Any]], path: str) -> list[Policy]:
        """``build_all`` for the entries of a list that could be decoded, at their own indexes."""
        seen: set[str] = set()
        policies = []
        problems: list[Problem] = []
        for index, spec in specs:
            try:
                if spec.name in seen:
                    raise invalid(f"{path}[{index}].name", f"duplicate policy name {spec.name!r}")
                seen.add(spec.name)
                policies.append(self.build(spec, f"{path}[{index}]"))
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(*problems)
        return policies
