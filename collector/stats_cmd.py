"""``tailsampler stats``: a running collector's sampling stats as tables, once or live (``--watch``).

Reads ``/api/v1/stats`` with a window, so every figure is there twice: over the last ``--window``
(with its rate per second) and since the agent started. With the redis buffer the figures are the
fleet's (every live agent's added up) and each agent gets a line of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tailsampler.common.cli_help import DefaultsFormatter
from tailsampler.common.durations import Duration


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = DefaultsFormatter
    parser.add_argument("--admin", default="127.0.0.1:13133",
                        help="the collector's admin endpoint: host:port, or https://host:port for an admin listener with tls")
    parser.add_argument("--token", default=os.environ.get("TAILSAMPLER_ADMIN_TOKEN"),
                        help="the admin API's bearer token (default: $TAILSAMPLER_ADMIN_TOKEN)")
    parser.add_argument("--ca-file", help="with https: the CA certificate the admin listener's certificate is checked against")
    parser.add_argument("--window", default="5m", help="figures over this last stretch of time (10s to 24h)")
    parser.add_argument("--by", action="append", choices=("service",), default=[],
                        help="also a table by root service (policies are always shown)")
    parser.add_argument("--watch", action="store_true", help="keep the tables up to date until Ctrl-C")
    parser.add_argument("--interval", default="2s", help="with --watch: how often to read the stats")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of tables")


class StatsUnavailable(Exception):
    """The admin API could not be read; the message says which URL and why."""


@dataclass(frozen=True)
class AdminApi:
    """Where the admin API is and how to be let in: its base URL, the bearer token, TLS trust."""

    base: str
    token: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> "AdminApi":
        base = args.admin if "://" in args.admin else f"http://{args.admin}"
        tls = ssl.create_default_context(cafile=args.ca_file) if base.startswith("https://") else None
        return cls(base.rstrip("/"), args.token, tls)


def fetch(api: AdminApi, window: str, by: list[str]) -> dict[str, Any]:
    query = urllib.parse.urlencode({"window": window, "by": ",".join(sorted({"policy", *by}))})
    url = f"{api.base}/api/v1/stats?{query}"
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=api.tls) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise StatsUnavailable(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatsUnavailable(f"cannot read {url}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        interval = float(Duration.parse(args.interval))
        if float(Duration.parse(args.window)) <= 0 or interval <= 0:
            raise ValueError("must be more than 0")
    except ValueError as exc:
        print(f"tailsampler stats: --window/--interval: {exc}", file=sys.stderr)
        return 2
    try:
        api = AdminApi.of(args)
    except (OSError, ssl.SSLError) as exc:
        print(f"tailsampler stats: --ca-file: {exc}", file=sys.stderr)
        return 2
    if not args.watch:
        try:
            stats = fetch(api, args.window, args.by)
        except StatsUnavailable as exc:
            print(f"tailsampler: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            Console(width=max(Console().width, 100)).print(render(stats, args.admin, args.by))
        return 0
    return _watch(args, api, interval)


def _watch(args: argparse.Namespace, api: AdminApi, interval: float) -> int:
    console = Console()
    try:
        with Live(Text("reading stats..."), console=console, auto_refresh=False) as live:
            while True:
                try:
                    stats = fetch(api, args.window, args.by)
                    view = (Text(json.dumps(stats)) if args.json else render(stats, args.admin, args.by))
                except StatsUnavailable as exc:
                    view = Text(f"{time.strftime('%H:%M:%S')} {exc} (retrying every {interval:g}s)", style="red")
                live.update(view, refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _n(value: float | int | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + (f"{hours}h " if days or hours else "") + f"{minutes}m {secs:02d}s"


def render(stats: dict[str, Any], admin: str, by: list[str]) -> Group:
    """The tables for one answer of ``/api/v1/stats`` (asked with a window and by policy)."""
    fleet = stats.get("fleet")
    view = fleet or stats
    window, agent = view["window"], stats["agent"]
    title = f"tailsampler at {admin}"
    if fleet:
        title += f": fleet of {fleet['agents']} agent(s) sharing one buffer"
    title += f", up {_duration(agent['uptime_seconds'])}"
    span = f"last {_duration(window['window_seconds'])}".replace(" 00s", "").replace("0m ", "")
    if window["seconds"] + window["step_seconds"] < window["window_seconds"]:
        span += f" ({_duration(window['seconds'])} so far)"
    parts: list[Any] = [Text(title, style="bold"), _sampling(view, window, span), _policies(view, window, span)]
    if "service" in by:
        parts.append(_services(window, span))
    alone = {**agent, "window": {"rates": window["rates"], "keep_percent": window["keep_percent"]}}
    parts.append(_agents(fleet["members"] if fleet else [alone], bool(fleet)))
    return Group(*parts)


def _sampling(view: dict[str, Any], window: dict[str, Any], span: str) -> Table:
    table = Table(title="sampling", title_justify="left", expand=False)
    for name, justify in (("", "left"), (span, "right"), ("per second", "right"), ("since start", "right")):
        table.add_column(name, justify=justify)
    spans, traces, rates = window["spans"], window["traces"], window["rates"]
    life_spans, life_traces = view["spans"], view["traces"]
    table.add_row("spans received", _n(spans["received"]), _n(rates["spans_received"]), _n(life_spans["received"]))
    table.add_row("traces kept", _n(traces["kept"]), _n(rates["traces_kept"]), _n(life_traces["kept"]))
    table.add_row("traces dropped", _n(traces["dropped"]), _n(rates["traces_dropped"]), _n(life_traces["dropped"]))
    life_decided = life_traces["kept"] + life_traces["dropped"]
    table.add_row("keep percent", _pct(window["keep_percent"]), "",
                  _pct(100 * life_traces["kept"] / life_decided if life_decided else None))
    table.add_row("storage reduction", _pct(window["storage_reduction_percent"]), "", "")
    table.add_row("bytes in / kept", f"{_bytes(window['bytes']['received'])} / {_bytes(window['bytes']['kept'])}",
                  f"{_bytes(rates['bytes_received'])} / {_bytes(rates['bytes_kept'])}", "")
    late, life_late = spans["late"], life_spans["late"]
    table.add_row("late spans kept / dropped", f"{_n(late.get('kept', 0))} / {_n(late.get('dropped', 0))}", "",
                  f"{_n(life_late.get('kept', 0))} / {_n(life_late.get('dropped', 0))}")
    table.add_row("early decisions", _reasons(traces["early"]), "", _reasons(life_traces["early"]))
    table.add_row("refused spans", _reasons(spans["refused"]), "", _reasons(life_spans["refused"]))
    lag = window["decision_lag_seconds"]
    table.add_row("decision lag mean / p99", f"{_ms(lag['mean'])} / ≤ {_ms(lag['p99'])}", "", "")
    buffered = view["buffer"]
    table.add_row("buffered now: traces / bytes",
                  f"{_n(buffered['traces'])} ({_fill(buffered['traces'], buffered.get('max_traces'))} full)", "",
                  f"{_bytes(buffered['bytes'])} ({_fill(buffered['bytes'], buffered.get('max_bytes'))} full)")
    return table


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _fill(value: int, limit: int | None) -> str:
    return _pct(100 * value / limit) if limit else "–"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {_n(n)}" for reason, n in sorted(counts.items())) or "0"


def _policies(view: dict[str, Any], window: dict[str, Any], span: str) -> Table:
    table = Table(title=f"policies, {span}", title_justify="left")
    for name in ("policy", "kept", "dropped", "sampled votes", "not sampled", "since start: kept"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    lifetime = view["traces"]["by_policy"]
    for policy, counts in sorted(window.get("by_policy", {}).items()):
        votes = counts["votes"]
        table.add_row(policy, _n(counts["kept"]), _n(counts["dropped"]), _n(votes.get("sampled", 0)),
                      _n(votes.get("not_sampled", 0)), _n(lifetime.get(policy, {}).get("kept", 0)))
    return table


def _services(window: dict[str, Any], span: str) -> Table:
    table = Table(title=f"root services, {span}", title_justify="left")
    for name in ("service", "traces", "kept", "dropped", "keep percent", "spans kept"):
        table.add_column(name, justify="left" if name == "service" else "right")
    rows = sorted(window.get("by_service", {}).items(), key=lambda item: -item[1]["traces"])
    for service, counts in rows:
        table.add_row(service, _n(counts["traces"]), _n(counts["kept"]), _n(counts["dropped"]),
                      _pct(counts["keep_percent"]), _n(counts["spans_kept"]))
    return table


def _agents(members: list[dict[str, Any]], fleet: bool) -> Table:
    table = Table(title="agents and exporters" if fleet else "exporters", title_justify="left")
    for name in ("agent", "admin", "up", "spans/s", "keep %", "exporter", "circuit", "queue"):
        table.add_column(name, justify="right" if name in ("spans/s", "keep %", "queue") else "left")
    for member in sorted(members, key=lambda m: m.get("admin", "")):
        own = member.get("window", {})
        exporters = member.get("exporters", {}) or {"–": {}}
        for index, (name, state) in enumerate(sorted(exporters.items())):
            circuit = state.get("circuit", "–")
            style = {"closed": "green", "half_open": "yellow", "open": "red"}.get(circuit, "")
            first = index == 0
            table.add_row(
                member["name"] if first else "", member["admin"] if first else "",
                _duration(member["uptime_seconds"]) if first else "",
                _n(own.get("rates", {}).get("spans_received")) if first and own else "",
                _pct(own.get("keep_percent")) if first and own else "",
                name, Text(circuit, style=style), f"{state.get('queue', '–')}/{state.get('queue_size', '–')}",
            )
    return table
