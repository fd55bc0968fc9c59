"""``tailsampler traces``: read the kept traces in the embedded SQLite store.

``list`` prints one line per trace, newest first; ``show`` prints one trace as a span tree. The
store is read-only here, so this works while the collector is running.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status, TracesData

from tailsampler.collector.config import load_config
from tailsampler.common.errors import ConfigError
from tailsampler.storage import SqliteSpec, TraceStoreError, get_trace, list_traces
from tailsampler.storage.summary import service_name

DEFAULT_DB = SqliteSpec().path


def configure(parser: argparse.ArgumentParser) -> None:
    source = argparse.ArgumentParser(add_help=False)
    where = source.add_mutually_exclusive_group()
    where.add_argument("--db", help=f"SQLite trace store (default: {DEFAULT_DB})")
    where.add_argument("--config", help="take the store path from this config's sqlite exporter")
    sub = parser.add_subparsers(dest="traces_command", required=True)
    listing = sub.add_parser("list", parents=[source], help="kept traces, newest first")
    listing.add_argument("--errors", action="store_true", help="only traces with an error span")
    listing.add_argument("--service", help="only traces whose root span is from this service")
    listing.add_argument("--policy", help="only traces kept by this policy")
    listing.add_argument("--limit", type=int, default=20, help="at most this many traces (default 20)")
    show = sub.add_parser("show", parents=[source], help="one trace as an indented span tree")
    show.add_argument("trace_id", help="32 hex digits")


def run(args: argparse.Namespace) -> int:
    try:
        path = _db_path(args)
        if args.traces_command == "list":
            return _list(path, args)
        return _show(path, args.trace_id)
    except (ConfigError, TraceStoreError) as exc:
        print(f"tailsampler traces: {exc}", file=sys.stderr)
        return 1


def _db_path(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    if not args.config:
        return DEFAULT_DB
    config = load_config(args.config)
    for spec in config.exporters:
        if isinstance(spec, SqliteSpec):
            return spec.path
    raise ConfigError(f"{args.config}: exporters: no sqlite exporter, so there is no trace store to read")


def _ms(nanos: int) -> str:
    """A duration in ms, or in µs below a millisecond (where "0.0 ms" would say nothing)."""
    return f"{nanos / 1e3:.1f} µs" if nanos < 1_000_000 else f"{nanos / 1e6:.1f} ms"


def _time(unix_nano: int) -> str:
    return datetime.fromtimestamp(unix_nano / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _list(path: str, args: argparse.Namespace) -> int:
    rows = list_traces(path, limit=args.limit, errors_only=args.errors, service=args.service, policy=args.policy)
    if not rows:
        print("no kept traces match")
        return 0
    print(f"{'TRACE ID':32}  {'START (UTC)':23}  {'DURATION':>11}  {'SPANS':>5}  {'ERROR':5}  {'POLICY':16}  ROOT")
    for row in rows:
        root = "(root not received)"
        if row["root_name"] is not None:
            root = f"{row['root_service'] or '?'}: {row['root_name']}"
        print(
            f"{row['trace_id']:32}  {_time(row['start_unix_nano']):23}  {_ms(row['duration_ns']):>11}"
            f"  {row['span_count']:>5}  {'ERROR' if row['error'] else '':5}  {row['policy'] or '-':16}  {root}"
        )
    return 0


def _show(path: str, trace_id: str) -> int:
    row = get_trace(path, trace_id)
    if row is None:
        raise TraceStoreError(f"trace {trace_id} is not in {path!r}")
    print(
        f"trace {row['trace_id']}  {_time(row['start_unix_nano'])} UTC  {_ms(row['duration_ns'])}"
        f"  {row['span_count']} spans  kept by {row['policy'] or '-'}"
    )
    for line in span_tree(row["spans"]):
        print(line)
    return 0


def span_tree(data: bytes) -> list[str]:
    """One line per span, indented under its parent, children in start order. Spans whose parent
    was never received are listed at the top level, marked; so are spans in a parent cycle, which
    a tree cannot place."""
    spans: list[tuple[Span, str]] = [
        (span, service_name(rs.resource))
        for rs in TracesData.FromString(data).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    ids = {span.span_id for span, _ in spans}
    children: dict[bytes, list[tuple[Span, str]]] = {}
    tops: list[tuple[Span, str]] = []
    for entry in spans:
        parent = entry[0].parent_span_id
        (children.setdefault(parent, []) if parent in ids else tops).append(entry)
    lines: list[str] = []
    shown: set[int] = set()
    stack = [(entry, 0) for entry in sorted(tops, key=_start, reverse=True)]
    while stack:
        (span, service), depth = stack.pop()
        shown.add(id(span))
        mark = "  ERROR" if span.status.code == Status.STATUS_CODE_ERROR else ""
        orphan = "  (parent not received)" if depth == 0 and span.parent_span_id else ""
        duration = span.end_time_unix_nano - span.start_time_unix_nano
        lines.append(f"{'  ' * depth}{service or '?'}: {span.name}  {_ms(duration)}{mark}{orphan}")
        stack.extend((child, depth + 1) for child in sorted(children.get(span.span_id, ()), key=_start, reverse=True))
    lines.extend(
        f"{service or '?'}: {span.name}  (in a parent cycle)" for span, service in spans if id(span) not in shown
    )
    return lines


def _start(entry: tuple[Span, str]) -> int:
    return entry[0].start_time_unix_nano
