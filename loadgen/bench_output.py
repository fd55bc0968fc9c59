"""The benchmark result as JSON and as the Markdown table BENCHMARKS.md quotes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

_DASH = "–"


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return _DASH
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "us":
        return f"{value:.1f} µs"
    if kind == "bytes":
        return f"{value:,.0f} B"
    if kind == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value}"


def _mode_value(result: dict[str, Any], mode: str, metric: str) -> float | None:
    return result["modes"].get(mode, {}).get("median", {}).get(metric)


def _cell(result: dict[str, Any], mode: str, metric: str, kind: str, ratio_metric: str | None = None) -> str:
    text = _fmt(_mode_value(result, mode, metric), kind)
    if ratio_metric is not None and text != _DASH:
        text += f" ({_fmt(_mode_value(result, mode, ratio_metric), 'ratio')} wire)"
    return text


def _pair(result: dict[str, Any], mode: str, first: str, second: str) -> str:
    values = [_mode_value(result, mode, metric) for metric in (first, second)]
    return _DASH if values == [None, None] else "; ".join(_fmt(value, "ratio") for value in values)


_COLUMNS = ("memory", "memory-contiguous", "attributes", "wal", "redis")
_COLUMN = {"memory-contiguous": "memory, contiguous spans", "attributes": "memory + attribute policies",
           "wal": "memory + WAL"}


def markdown(result: dict[str, Any]) -> str:
    options = result["options"]
    modes = [m for m in _COLUMNS if result["modes"].get(m, {}).get("median")]
    bound = options["after_root_s"] + 2 * options["tick_s"]
    null_rate = result["null_server"]["median"]
    rows: list[tuple[str, str, list[str], str]] = [
        ("ingest, spans/s", _fmt(null_rate, "rate"),
         [_cell(result, m, "ingest_spans_per_second", "rate") for m in modes], ""),
        ("ingest ÷ null server (per-round ratio)", "1.00×",
         [_cell(result, m, "ingest_ratio_to_null", "ratio") for m in modes], "≥ 1.0× (memory)"),
        ("CPU per span, ingest only (decisions held)", _fmt(result["null_server"]["cpu_median"], "us"),
         [_cell(result, m, "ingest_cpu_us_per_span", "us") for m in modes], ""),
        ("collector CPU per span, end to end", _DASH,
         [_cell(result, m, "collector_cpu_us_per_span", "us") for m in modes], "≤ 3 µs memory, ≤ 5 µs redis"),
        ("collector CPU per span ÷ memory buffer's (ingest only; end to end)", _DASH,
         [_pair(result, m, "ingest_cpu_to_memory", "collector_cpu_to_memory") for m in modes],
         "≤ 1.15× end to end (WAL)"),
        ("write-ahead log on disk per buffered span", _DASH,
         [_cell(result, m, "wal_disk_bytes_per_buffered_span", "bytes", "wal_disk_to_wire_bytes") for m in modes],
         "≤ 1.2× wire (WAL)"),
        ("Redis CPU per span (INFO cpu)", _DASH,
         [_cell(result, m, "redis_cpu_us_per_span", "us") for m in modes], "≤ 1.5 µs"),
        ("collector RSS per buffered span", _DASH,
         [_cell(result, m, "rss_bytes_per_buffered_span", "bytes", "rss_to_wire_bytes") for m in modes],
         "≤ 1.2× wire (memory)"),
        ("Redis used_memory per buffered span", _DASH,
         [_cell(result, m, "redis_used_memory_per_buffered_span", "bytes", "redis_used_memory_to_wire_bytes")
          for m in modes], "≤ 1.2× wire"),
        ("decision latency after root, p50", _DASH,
         [_cell(result, m, "decision_latency_p50_s", "s") for m in modes], ""),
        ("decision latency after root, p99", _DASH,
         [_cell(result, m, "decision_latency_p99_s", "s") for m in modes], f"≤ {bound * 1000:.0f} ms"),
    ]
    machine = result["machine"]
    machine_line = (
        f"Run {result['when']} on {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['system']} (load average at the end: {', '.join(map(str, machine['load_average']))})."
    )
    pins = ", ".join(f"{name}={value}" for name, value in options["malloc"].items())
    setup_line = (
        f"{options['rounds']} round(s) of {result['spans_per_round']:,} spans in requests of "
        f"{options['batch_spans']} spans ({result['wire_bytes_per_span']:.0f} wire bytes per span), each "
        f"scope's spans {options['layout']} trace by trace (the contiguous column: each trace's spans side "
        f"by side), {options['concurrency']} requests in flight, OTLP/gRPC; every process runs with {pins}. "
        "Medians of the rounds; ratios are taken within a run. End-to-end runs use decision_wait "
        f"{options['decision_wait_s']}s, decision_wait_after_root_received {options['after_root_s']}s, "
        f"tick {options['tick_s']}s and the example policies (errors, latency > 1s, 1% of the rest); the "
        "attribute-policy column adds a string_attribute on http.route and an ottl_condition on span "
        "attributes that keep nothing more. End-to-end CPU counts until every trace is decided and every "
        "kept span has reached the sink."
    )
    lines = [machine_line]
    if modes:
        lines += [
            "",
            setup_line,
            "",
            "| metric | null server | " + " | ".join(f"tailsampler {_COLUMN.get(m, m)}" for m in modes) + " | target |",
            "|---|---:|" + "---:|" * len(modes) + "---|",
        ]
        lines += [f"| {name} | {null} | " + " | ".join(cells) + f" | {target} |" for name, null, cells, target in rows]
    lines += _cluster_lines(result["modes"].get("cluster", {}), options)
    lines += _overload_lines(result["modes"].get("overload", {}))
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for label, target in result["targets"].items():
        met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
        measured = target["measured"]
        lines.append(f"| {label} | {_DASH if measured is None else f'{measured:.3g}'} | {met} |")
    for mode, data in result["modes"].items():
        if not data.get("available"):
            reason = data.get("reason", "").strip().splitlines()
            lines += ["", f"**{mode} mode unavailable:** {reason[0] if reason else 'unknown'}"]
    for name, rows_ in result.get("profile", {}).items():
        lines += ["", f"cProfile, {name} collector (own time, top functions):", "",
                  "| function | own | cumulative | calls |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['function']}` | {r['own_share']:.1%} | {r['cumulative_share']:.1%} | {r['calls']} |"
                  for r in rows_[:12]]
    return "\n".join(lines)


def _cluster_lines(data: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """The cluster mode's table: one agent, one agent taking several agents' requests, and
    several agents, on one Redis Cluster, the same traces."""
    median = data.get("median")
    if not median:
        return []
    agents = options["cluster_agents"]
    label = f"{agents}_agents"

    def row(name: str, metric: str) -> str:
        one, spread, many = (median.get(f"{metric}_{fleet}") for fleet in ("1_agent", "1_agent_spread", label))
        ratio = _fmt(many / one, "ratio") if one and many is not None else _DASH
        return f"| {name} | {_fmt(one, 'us')} | {_fmt(spread, 'us')} | {_fmt(many, 'us')} | {ratio} |"

    return [
        "",
        f"Redis Cluster of 3 masters, end to end, the same requests into 1 agent and into {agents} agents "
        f"sharing the cluster buffer (each service sending to one agent, so a trace's spans reach several); "
        f"CPU summed over the agents. The middle column is 1 agent taking the {agents} agents' requests: "
        f"their fragments (a trace arrives in several) without their processes "
        f"(per-round ratio to 1 agent, median: {_fmt(median.get('cpu_1_agent_spread_to_1_agent'), 'ratio')}). "
        f"Target: {agents} agents ÷ 1 agent ≤ 1.15× "
        f"(per-round ratio, median: {_fmt(median.get('cpu_agents_to_1_agent'), 'ratio')}).",
        "",
        f"| per span | 1 agent | 1 agent, {agents} agents' requests | {agents} agents | {agents} ÷ 1 |",
        "|---|---:|---:|---:|---:|",
        row("collector CPU", "collector_cpu_us_per_span"),
        row("Redis CPU (INFO cpu, all nodes)", "redis_cpu_us_per_span"),
    ]


def _overload_lines(data: dict[str, Any]) -> list[str]:
    """The overload mode's table: the same traffic into a collector with relief and one without."""
    median = data.get("median")
    if not median:
        return []
    o = data["options"]
    rows = [
        ("traces/s sent", "sent_traces_per_second", "rate"),
        ("spans/s sent", "sent_spans_per_second", "rate"),
        ("spans refused", "refused_spans", "rate"),
        ("RSS idle", "rss_idle_bytes", "bytes"),
        ("RSS peak", "rss_peak_bytes", "bytes"),
        ("RSS peak, second half ÷ first half", "rss_second_half_to_first_half", "ratio"),
        ("buffer peak, share of num_traces", "buffer_peak_fill", "share"),
        ("time with relief on", "relief_active_share", "share"),
        ("traces decided at once by relief", "decided_at_once_share", "share"),
        ("traces decided early (buffer full)", "decided_early_share", "share"),
    ]

    def cell(key: str, kind: str) -> str:
        value = median.get(key)
        return f"{value:.0%}" if kind == "share" and value is not None else _fmt(value, kind)

    lines = [
        "",
        f"Overload: a memory buffer of num_traces {o['num_traces']:,} and decision_wait {o['decision_wait_s']}s sustains "
        f"{median['sustainable_traces_per_second']:,.0f} new traces/s; {o['times_sustainable']:g}× that "
        f"({median['offered_traces_per_second']:,.0f} traces/s) for {o['overload_seconds']:g}s, the example policies, "
        "relief at 90% (off at 75%, 10% kept by trace ID, errors kept).",
        "",
        "| at 3× the sustainable load | relief on | relief off |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {cell(key, kind)} | {cell('without_relief_' + key, kind)} |" for name, key, kind in rows]
    return lines


def write_result(result: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if markdown_path is not None:
        markdown_path.write_text("# Benchmarks\n\n" + markdown(result) + "\n")
