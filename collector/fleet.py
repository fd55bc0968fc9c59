"""The fleet's view: what each agent publishes beside its counters, and how agents add up.

Every agent publishes its lifetime counters, a few facts about itself (``agent``: its name, admin
address, uptime, exporters, which wire core it runs) and its recent intervals (``history``, bounded: ``PUBLISHED``). Any
agent answers for the fleet by adding up what the live agents published: counters key by key,
intervals by their start, which every agent aligns on the wall clock.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from tailsampler.collector import wire
from tailsampler.collector.history import PUBLISHED, add_up, decode, extent_of
from tailsampler.collector.stats import StatsQuery, merge, window_stats
from tailsampler.storage import Exporter

AGENT_NAME = f"{socket.gethostname()}/{os.getpid()}"


def agent_facts(admin: str, started: float, exporters: list[Exporter], now: float, config_hash: str) -> dict[str, Any]:
    """Who this agent is, which config and wire core it runs, and how its exporters are doing
    (queues, circuits)."""
    states = {}
    for exporter in exporters:
        healthy, info = exporter.health()
        states[exporter.name] = {"healthy": healthy, **info}
    return {
        "name": AGENT_NAME,
        "admin": admin,
        "config_hash": config_hash,
        "started": started,
        "uptime_seconds": round(now - started, 3),
        "exporters": states,
        "core": wire.CORE,
    }


def fleet_view(published: list[dict[str, Any]], buffer: dict[str, Any], query: StatsQuery) -> dict[str, Any]:
    """The live agents' counters added up, each agent's facts, and with a window the fleet's
    totals and rates over it (at most the last hour: that is what agents publish)."""
    now = time.time()
    histories, members = [], []
    counters = []
    for snapshot in published:
        snapshot = dict(snapshot)
        histories.append(snapshot.pop("history", None) or {})
        members.append(snapshot.pop("agent", None) or {})
        counters.append(snapshot)
    view: dict[str, Any] = {**merge(counters), "buffer": buffer, "agents": len(published), "configs": _configs(members)}
    if query.window is None:
        view["members"] = members
        return view
    step, length = next(((s, n) for s, n in PUBLISHED if query.window <= s * n), PUBLISHED[-1])
    extent = extent_of(min(query.window, step * length), now, step)
    decoded = [decode(history.get(str(step), {})) for history in histories]
    started = min((h.get("started", now) for h in histories), default=now)
    covered = now - max(extent.first, started)
    view["window"] = window_stats(add_up(decoded, extent.first), query, covered, step, extent.first)
    for member, intervals, history in zip(members, decoded, histories):
        since = now - max(extent.first, history.get("started", now))
        own = window_stats(add_up([intervals], extent.first), StatsQuery(query.window), since, step, extent.first)
        member["window"] = {"rates": own["rates"], "keep_percent": own["keep_percent"]}
    view["members"] = members
    return view


def _configs(members: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Which agents run which config (by the hash of its file): a fleet with mixed configs shows it."""
    configs: dict[str, list[str]] = {}
    for member in members:
        configs.setdefault(str(member.get("config_hash", "unknown")), []).append(str(member.get("name", "unknown")))
    return configs
