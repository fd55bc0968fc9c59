"""Live config changes: what a reload may change, and what it must refuse.

SIGHUP and ``POST /api/v1/reload`` re-read the config file through ``load_config`` (so a reload
reads the file exactly as a start would) and check it whole first: a file with any problem changes
nothing. Policies, recording, the decision cache, overload relief, exporters and the log settings
change live; the running collector swaps them in between two decision rounds (``app.Collector``).
Everything else is read once, when the agent starts (listeners, the buffer and its connection,
its bounds and timing), so a file that changes any of it is refused, naming each key and saying
that it needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

import msgspec
from aiohttp import web

from tailsampler.collector.config import Config
from tailsampler.common.errors import Problem
from tailsampler.common.settings import enc_hook
from tailsampler.storage import Exporter, ExporterSpec

# the key paths whose values a running agent can take over without a restart
LIVE = (
    "tail_sampling.policies",
    "tail_sampling.sample_on_first_match",
    "tail_sampling.recording",
    "tail_sampling.decision_cache",
    "tail_sampling.overload",
    "tail_sampling.drop_pending_traces_on_shutdown",
    "tail_sampling.expected_new_traces_per_sec",
    "exporters",
    "service.log_level",
    "service.log_format",
    "service.shutdown_timeout",
)


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """The key paths where two decoded configs differ (a whole list counts as one value)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys(), key=str):
            found += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if old == new else [path]


def changed_keys(running: Config, new: Config) -> list[str]:
    """Every key path whose value differs between two configs."""
    return _differences(msgspec.to_builtins(running, enc_hook=enc_hook), msgspec.to_builtins(new, enc_hook=enc_hook), "")


def is_live(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in LIVE)


def restart_problems(changed: list[str]) -> list[Problem]:
    """A problem for each changed key that only a restart can take over."""
    return [
        Problem(path, "changing it needs a restart: it is read once, when the agent starts")
        for path in changed
        if not is_live(path)
    ]


@dataclass
class ExporterPlan:
    """How the running exporters become the configured ones: by name, an exporter whose spec is
    unchanged keeps running (its queue and connections untouched); the rest are new, replaced
    (same name, new spec) or removed."""

    exporters: list[Exporter]  # the new list, in config order
    new: list[Exporter] = field(default_factory=list)  # to open, then start at the swap
    replaced: list[Exporter] = field(default_factory=list)  # running ones to retire after the swap
    removed: list[Exporter] = field(default_factory=list)


def plan_exporters(
    running: dict[str, tuple[ExporterSpec, Exporter]],
    specs: list[ExporterSpec],
    names: list[str],
    build: Callable[[list[ExporterSpec], list[str]], list[Exporter]],
) -> ExporterPlan:
    """``running``: name -> (spec, exporter) of what runs now; ``build(specs, names)`` makes the
    exporters that are new or changed."""
    changed = [(name, spec) for name, spec in zip(names, specs) if name not in running or running[name][0] != spec]
    fresh = iter(build([spec for _, spec in changed], [name for name, _ in changed]))
    plan = ExporterPlan([])
    for name, spec in zip(names, specs):
        if name in running and running[name][0] == spec:
            plan.exporters.append(running[name][1])
            continue
        exporter = next(fresh)
        plan.exporters.append(exporter)
        plan.new.append(exporter)
        if name in running:
            plan.replaced.append(running[name][1])
    plan.removed = [exporter for name, (_, exporter) in running.items() if name not in names]
    return plan


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``applied`` (``changed`` lists the key paths taken over, empty when
    the file means what runs already) or ``rejected`` (every problem, nothing changed)."""

    result: Literal["applied", "rejected"]
    config_hash: str
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"result": self.result, "config_hash": self.config_hash}
        out["changed" if self.result == "applied" else "problems"] = self.changed if self.result == "applied" else self.problems
        return out


def routes(reload: Callable[[], Awaitable[ReloadOutcome | None]]) -> list[web.RouteDef]:
    """``POST /api/v1/reload`` for the admin listener: 200 applied, 400 rejected (with every
    problem), 503 while the agent shuts down (``reload`` answers None)."""

    async def reload_page(request: web.Request) -> web.Response:
        outcome = await reload()
        if outcome is None:
            return web.json_response({"result": "rejected", "problems": ["the agent is shutting down"]}, status=503)
        return web.json_response(outcome.as_json(), status=200 if outcome.result == "applied" else 400)

    return [web.post("/api/v1/reload", reload_page)]
