"""Config problems, collected rather than raised one at a time.

A config file is checked whole: every problem found is reported at once, each with the key path
it is about (``tail_sampling.policies[3].latency.threshold_ms``) and what was expected, so an SRE
fixes a file in one round instead of one error per restart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: where (a key path, or "" for the file as a whole) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` holds every problem found; the message has one
    line per problem, each prefixed with the file when ``source`` is known."""

    def __init__(self, *problems: Problem | str, source: str = "") -> None:
        self.problems = tuple(p if isinstance(p, Problem) else Problem("", p) for p in problems)
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" if source else str(p) for p in self.problems))

    def at(self, source: str) -> "ConfigError":
        """The same problems, reported as found in ``source``."""
        return ConfigError(*self.problems, source=source)
