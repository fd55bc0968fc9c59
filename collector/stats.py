"""Sampling stats for ``/api/v1/stats`` and ``tailsampler stats``, read off the metrics registry."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import Counter

from tailsampler.collector.buffer import Occupancy
from tailsampler.collector.metrics import Metrics


def _samples(counter: Counter) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


def _by(counter: Counter, label: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for labels, value in _samples(counter):
        out[labels[label]] += int(value)
    return dict(out)


def snapshot(metrics: Metrics, buffer: Occupancy) -> dict[str, object]:
    by_policy: dict[str, dict[str, int]] = defaultdict(lambda: {"kept": 0, "dropped": 0})
    for labels, value in _samples(metrics.traces_decided):
        by_policy[labels["policy"] or "(none)"][labels["decision"]] += int(value)
    votes: dict[str, dict[str, int]] = defaultdict(dict)
    for labels, value in _samples(metrics.policy_votes):
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
