""""What if": the last kept traces in the store, decided again by an edited policy list.

Runs the engine the collector runs, built afresh from the edited list, on traces read from the
SQLite store, in the order they end, with their span times as the clock (as ``tailsampler
evaluate`` does); nothing of the running collector changes. The store holds kept traces only, so
the answer is which of them the edited list would still keep, and by which policy.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from tailsampler.collector import wire
from tailsampler.collector.config import TailSamplingConfig
from tailsampler.collector.evaluate import SpanClock
from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect
from tailsampler.policies import PolicyContext, TraceView, build_engine, policy_problems
from tailsampler.storage import recent_traces

MAX_TRACES = 2000
_PATH = "tail_sampling"


def parse_policies(text: str) -> TailSamplingConfig:
    """A ``tail_sampling`` block in YAML (or just its ``policies`` list); every problem is
    raised at once in one ``ConfigError``, each at its key path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if isinstance(data, list):
        data = {"policies": data}
    if not isinstance(data, dict) or not isinstance(data.get("policies"), list):
        raise ConfigError(Problem(_PATH, "expected a policies list, or a mapping with one under policies"))
    problems: list[Problem] = []
    settings = collect(data, TailSamplingConfig, _PATH, problems)
    problems += policy_problems(data["policies"], f"{_PATH}.policies", PolicyContext(clock=SpanClock()))
    if problems or settings is INVALID:
        raise ConfigError(*dict.fromkeys(problems))
    return settings


def _view(row: dict[str, Any]) -> TraceView | None:
    """The stored trace as the decision loop sees it, or None for bytes that hold no trace."""
    data = row.pop("spans")
    try:
        return TraceView(bytes.fromhex(row["trace_id"]), data, wire.facts_of(data))
    except (wire.WireError, ValueError):
        return None


def what_if(settings: TailSamplingConfig, store: str, limit: int) -> dict[str, Any]:
    """Each of the last ``limit`` kept traces decided by ``settings``' policies, and a summary."""
    clock = SpanClock()
    engine = build_engine(settings, PolicyContext(clock))
    rows = recent_traces(store, min(max(1, limit), MAX_TRACES))
    views = sorted(
        ((view, row) for row in rows if (view := _view(row)) is not None),
        key=lambda pair: (pair[0].end_time_unix_nano, pair[0].trace_id),
    )
    results, by_policy = [], Counter()
    for view, row in views:
        clock.now = view.end_time_unix_nano / 1e9
        evaluation = engine.decide(view)
        verdict = evaluation.verdict
        by_policy["kept" if verdict.keep else "dropped", verdict.policy or "(none)"] += 1
        results.append({
            "trace_id": row["trace_id"],
            "root_service": row["root_service"],
            "root_name": row["root_name"],
            "error": row["error"],
            "duration_ns": row["duration_ns"],
            "kept_by": row["policy"],
            "decision": "keep" if verdict.keep else "drop",
            "policy": verdict.policy,
            "votes": {name: vote.value for name, vote in evaluation.votes.items()},
        })
    policies: dict[str, dict[str, int]] = {}
    for (decision, policy), count in by_policy.items():
        policies.setdefault(policy, {"kept": 0, "dropped": 0})[decision] = count
    kept = sum(count for (decision, _), count in by_policy.items() if decision == "kept")
    return {
        "policies": engine.policy_names,
        "traces": len(results),
        "kept": kept,
        "dropped": len(results) - kept,
        "by_policy": policies,
        "results": results[::-1],  # newest first, as the store lists them
    }
