"""``tailsampler evaluate``: run the configured policies over traces saved in OTLP files.

Answers "what would my config keep?" offline, with the same engine the collector runs. Files
hold protobuf ``TracesData`` / ``ExportTraceServiceRequest`` bodies, or OTLP JSON lines as the
OpenTelemetry Collector's file exporter writes them. Spans are grouped by trace across all
files, and traces are decided in the order they end; stateful policies (rate limits, composite
budgets, dynamic and throughput) see the span times as their clock, so a recorded hour behaves
like that hour did.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tailsampler.collector.config import load_config
from tailsampler.common.errors import ConfigError
from tailsampler.common.otlp_json import JsonDecodeError, request_from_json
from tailsampler.collector import wire
from tailsampler.policies import Evaluation, PolicyContext, TraceView, build_engine


class InputError(Exception):
    """An input file that cannot be read as OTLP traces; the message names file and line."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="tailsampler config whose tail_sampling policies decide")
    parser.add_argument("files", nargs="+", metavar="FILE", help="OTLP protobuf file, or OTLP JSON lines (file exporter output)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per trace instead of text")


def read_requests(path: Path) -> Iterator[ExportTraceServiceRequest]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if data.lstrip()[:1] in (b"{", b""):
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                try:
                    yield request_from_json(line)
                except JsonDecodeError as exc:
                    raise InputError(f"{path}:{number}: {exc}") from None
        return
    try:
        yield ExportTraceServiceRequest.FromString(data)
    except DecodeError as exc:
        raise InputError(f"{path}: neither OTLP JSON lines nor an OTLP protobuf TracesData: {exc}") from None


def collect_traces(paths: list[Path]) -> tuple[list[TraceView], int]:
    """Every trace in ``paths`` (in the order they end) and the number of spans refused for bad IDs."""
    fragments: dict[bytes, list[wire.Fragment]] = {}
    rejected = 0
    for path in paths:
        for request in read_requests(path):
            try:
                split = wire.split(request.SerializeToString())
            except wire.WireError as exc:  # nesting upb parsed but the wire walk refuses
                raise InputError(f"{path}: {exc}") from None
            rejected += split.rejected_spans
            for trace_id, fragment in split.fragments.items():
                fragments.setdefault(trace_id, []).append(fragment)
    traces = [
        TraceView(trace_id, b"".join(f.data for f in parts), wire.merge_facts(b"".join(f.facts for f in parts)))
        for trace_id, parts in fragments.items()
    ]
    traces.sort(key=lambda t: (t.end_time_unix_nano, t.trace_id))
    return traces, rejected


class SpanClock:
    """Simulated seconds: the end time of the trace being decided."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def verdict_record(trace: TraceView, evaluation: Evaluation, names: list[str]) -> dict:
    verdict, votes = evaluation.verdict, evaluation.votes
    return {
        "trace_id": trace.trace_id.hex(),
        "decision": "keep" if verdict.keep else "drop",
        "policy": verdict.policy,
        "votes": {name: votes[name].value for name in names if name in votes},
        "sample_rate": verdict.sample_rate,
        "spans": trace.span_count,
    }


def format_text(record: dict, names: list[str]) -> str:
    votes = " ".join(f"{name}={record['votes'].get(name, '-')}" for name in names)
    return f"{record['trace_id']} {record['decision']} {record['policy'] or '-'} {votes}".rstrip()


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        config = load_config(args.config)
        clock = SpanClock()
        engine = build_engine(config.tail_sampling, PolicyContext(clock))
        traces, rejected = collect_traces([Path(f) for f in args.files])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if rejected:
        print(f"warning: {rejected} span(s) skipped: invalid trace or span ID", file=sys.stderr)
    names = engine.policy_names
    summary = Summary()
    try:
        for trace in traces:
            clock.now = trace.end_time_unix_nano / 1e9
            record = verdict_record(trace, engine.decide(trace), names)
            summary.add(record)
            line = msgspec.json.encode(record).decode() if args.json else format_text(record, names)
            print(line, file=out)
        print(summary.text(), file=sys.stderr if args.json else out)
        out.flush()
    except BrokenPipeError:  # the reader went away (``| head``): what it read is all it wanted
        _quiet_stdout()
    return 0


class Summary:
    """What ``evaluate`` ends with: traces, kept and dropped, overall and by deciding policy."""

    def __init__(self) -> None:
        self.by_policy: dict[str, dict[str, int]] = {}

    def add(self, record: dict) -> None:
        counts = self.by_policy.setdefault(record["policy"] or "-", {"keep": 0, "drop": 0})
        counts[record["decision"]] += 1

    def text(self) -> str:
        kept = sum(c["keep"] for c in self.by_policy.values())
        dropped = sum(c["drop"] for c in self.by_policy.values())
        lines = [f"{kept + dropped} traces: {kept} kept, {dropped} dropped"]
        for policy, counts in sorted(self.by_policy.items()):
            lines.append(f"  {policy:24} kept {counts['keep']:>8}  dropped {counts['drop']:>8}")
        return "\n".join(lines)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
