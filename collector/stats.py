"""Sampling stats for ``/api/v1/stats`` and ``tailsampler stats``: lifetime counters read off the
metrics registry, and totals and rates over a window of the history's intervals."""

from __future__ import annotations

import time
from collections import Counter as Counts, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from tailsampler.collector.buffer import Occupancy
from tailsampler.collector.metrics import Metrics
from tailsampler.common.durations import Duration


def samples(counter: Counter) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


def _by(counter: Counter, label: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for labels, value in samples(counter):
        out[labels[label]] += int(value)
    return dict(out)


def snapshot(metrics: Metrics, buffer: Occupancy) -> dict[str, object]:
    by_policy: dict[str, dict[str, int]] = defaultdict(lambda: {"kept": 0, "dropped": 0})
    for labels, value in samples(metrics.traces_decided):
        by_policy[labels["policy"] or "(none)"][labels["decision"]] += int(value)
    votes: dict[str, dict[str, int]] = defaultdict(dict)
    for labels, value in samples(metrics.policy_votes):
        votes[labels["policy"]][labels["vote"]] = int(value)
    decided = _by(metrics.traces_decided, "decision")
    return {
        "spans": {
            "received": sum(_by(metrics.spans_received, "transport").values()),
            "refused": _by(metrics.spans_refused, "reason"),
            "late": _by(metrics.late_spans, "decision"),
        },
        "traces": {
            "kept": decided.get("kept", 0),
            "dropped": decided.get("dropped", 0),
            "by_policy": dict(by_policy),
            "early": _by(metrics.early_decisions, "reason"),
        },
        "policies": dict(votes),
        "buffer": {"traces": buffer.traces, "bytes": buffer.bytes},
    }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up several agents' counters, key by key (nested dicts of numbers). What is not a
    number (an agent's name, its config hash) is not a counter and is left out."""
    total: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if isinstance(value, dict):
                total[key] = merge([total.get(key, {}), value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


MIN_WINDOW, MAX_WINDOW = 10.0, 86_400.0
BREAKDOWNS = ("service", "policy")


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """What ``/api/v1/stats`` is asked for: lifetime counters always; with ``window`` (seconds),
    totals and rates over the last ``window``, broken down ``by`` service and/or policy, and with
    ``series`` the window's intervals one by one (for charts)."""

    window: float | None = None
    by: tuple[str, ...] = ()
    series: bool = False

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> "StatsQuery":
        """From the query string; a bad value raises ``ValueError`` naming the parameter."""
        unknown = set(query) - {"window", "by", "series"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}; expected window, by, series")
        window = None
        if "window" in query:
            try:
                window = float(Duration.parse(query["window"]))
            except ValueError as exc:
                raise ValueError(f"window: {exc}") from None
            if not MIN_WINDOW <= window <= MAX_WINDOW:
                raise ValueError(f"window: must be between 10s and 24h, got {query['window']!r}")
        by = tuple(part for part in query.get("by", "").split(",") if part)
        if set(by) - set(BREAKDOWNS):
            raise ValueError(f"by: expected service, policy or both (service,policy), got {query['by']!r}")
        series = query.get("series", "false").lower()
        if series not in ("true", "false", "1", "0"):
            raise ValueError(f"series: expected true or false, got {query['series']!r}")
        if (by or series in ("true", "1")) and window is None:
            raise ValueError("by and series need a window, e.g. window=5m")
        return cls(window, by, series in ("true", "1"))


def _rate(count: float, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 else 0.0


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 3) if whole else None


def _lag(total: Counts) -> dict[str, float | None]:
    """Mean decision lag and the bucket bound under which 99% of decisions fell."""
    count = total.get(("lag", "count"), 0)
    if not count:
        return {"mean": None, "p99": None}
    bounds = sorted((float(key[2]), value) for key, value in total.items() if key[:2] == ("lag", "le"))
    p99 = next((bound for bound, below in bounds if below >= 0.99 * count), None)
    return {"mean": round(total[("lag", "sum")] / count, 6), "p99": None if p99 == float("inf") else p99}


def window_stats(
    intervals: list[tuple[int, Counts]], query: StatsQuery, seconds: float, step: int, first: int
) -> dict[str, Any]:
    """Totals and rates over intervals covering ``seconds`` of the window asked for, whose first
    interval starts at ``first``."""
    total: Counts = Counts()
    for _, counts in intervals:
        total.update(counts)

    def picked(kind: str) -> dict[str, int]:
        return {key[2]: int(value) for key, value in total.items() if key[:2] == ("spans", kind)}

    kept, dropped = _sum(total, "traces", "kept"), _sum(total, "traces", "dropped")
    spans_kept, spans_dropped = total.get(("spans", "kept"), 0), total.get(("spans", "dropped"), 0)
    received, bytes_in, bytes_kept = (
        total.get(("spans", "received"), 0), total.get(("bytes", "received"), 0), total.get(("bytes", "kept"), 0)
    )
    out: dict[str, Any] = {
        "window_seconds": query.window,
        "seconds": round(seconds, 3),
        "step_seconds": step,
        "spans": {
            "received": int(received), "kept": int(spans_kept), "dropped": int(spans_dropped),
            "refused": picked("refused"), "late": picked("late"),
        },
        "traces": {
            "kept": int(kept), "dropped": int(dropped),
            "early": {key[1]: int(value) for key, value in total.items() if key[0] == "early"},
        },
        "bytes": {"received": int(bytes_in), "kept": int(bytes_kept)},
        "rates": {
            "spans_received": _rate(received, seconds), "spans_kept": _rate(spans_kept, seconds),
            "traces_kept": _rate(kept, seconds), "traces_dropped": _rate(dropped, seconds),
            "bytes_received": _rate(bytes_in, seconds), "bytes_kept": _rate(bytes_kept, seconds),
        },
        "keep_percent": _percent(kept, kept + dropped),
        "storage_reduction_percent": _reduction(spans_kept, spans_kept + spans_dropped),
        "decision_lag_seconds": _lag(total),
    }
    if "policy" in query.by:
        out["by_policy"] = _by_policy(total)
    if "service" in query.by:
        out["by_service"] = _by_service(total)
    if query.series:
        out["series"] = _series(intervals, step, first, max(first, int(time.time() // step * step)))
    return out


def _sum(total: Counts, *prefix: str) -> float:
    return sum(value for key, value in total.items() if key[: len(prefix)] == prefix)


def _reduction(kept: float, decided: float) -> float | None:
    return round(100.0 * (1 - kept / decided), 3) if decided else None


def _by_policy(total: Counts) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"kept": 0, "dropped": 0, "votes": {}})
    for key, value in total.items():
        if key[0] == "traces":
            out[key[2] or "(none)"][key[1]] += int(value)
        elif key[0] == "votes":
            out[key[1]]["votes"][key[2]] = int(value)
    return dict(out)


def _by_service(total: Counts) -> dict[str, dict[str, Any]]:
    """Each root service's traces: received (root spans), kept, and dropped (the rest)."""
    raw: dict[str, Counts] = defaultdict(Counts)
    for key, value in total.items():
        if key[0] == "service":
            raw[key[1]][key[2]] += value
    out = {}
    for service, counts in raw.items():
        received, kept = int(counts["received"]), int(counts["kept"])
        out[service or "(none)"] = {
            "traces": max(received, kept), "kept": kept, "dropped": max(0, received - kept),
            "keep_percent": _percent(kept, max(received, kept)), "spans_kept": int(counts["spans_kept"]),
        }
    return out


def _series(intervals: list[tuple[int, Counts]], step: int, first: int, last: int) -> dict[str, Any]:
    """The window interval by interval, from ``first`` to ``last`` (the one in progress), empty
    ones as zeros."""
    by_start = dict(intervals)
    starts = list(range(first, last + step, step))
    policies = sorted({key[2] for _, c in intervals for key in c if key[0] == "traces"})

    def column(key: tuple[str, ...]) -> list[int]:
        return [int(by_start.get(s, {}).get(key, 0)) for s in starts]

    return {
        "step_seconds": step,
        "starts": starts,
        "spans_received": column(("spans", "received")),
        "bytes_received": column(("bytes", "received")),
        "kept_by_policy": {p or "(none)": column(("traces", "kept", p)) for p in policies},
        "dropped_by_policy": {p or "(none)": column(("traces", "dropped", p)) for p in policies},
    }
