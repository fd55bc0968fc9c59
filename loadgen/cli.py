"""The ``tailsampler-loadgen`` command line: send traffic, report sampling quality, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from tailsampler.common.cli_help import DefaultsFormatter
from tailsampler.common.durations import Duration
from tailsampler.loadgen.hotpath import STAGES
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import ProcessFailed
from tailsampler.loadgen.progress import RunProgress
from tailsampler.loadgen.transport import PROTOCOLS, loopback_endpoint


def _duration(text: str) -> float:
    try:
        return float(Duration.parse(float(text) if text.replace(".", "", 1).isdigit() else text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _endpoint(text: str) -> str:
    try:
        return loopback_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _traffic_arguments(parser: argparse.ArgumentParser, targets_required: bool) -> None:
    group = parser.add_argument_group("traffic")
    group.add_argument("--target", action="append", type=_endpoint, required=targets_required,
                       help="collector OTLP endpoint (gRPC port for grpc, HTTP port otherwise); repeat "
                            "to spread services, and so each trace's spans, over several agents")
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="OTLP transport")
    group.add_argument("--gzip", action="store_true", help="gzip HTTP request bodies")
    rate = group.add_mutually_exclusive_group()
    rate.add_argument("--traces-per-second", type=float, help="pace by traces (default: 100, unless --spans-per-second)")
    rate.add_argument("--spans-per-second", type=float, help="pace by spans instead")
    bound = group.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=_duration, help="how long to send, e.g. 30s (default: 10s, unless --count)")
    bound.add_argument("--count", type=int, help="how many traces to send instead")
    group.add_argument("--error-ratio", type=float, default=0.001,
                       help="share of failing traces, spread evenly from the first trace on")
    group.add_argument("--slow-ratio", type=float, default=0.01, help="share of slow traces, spread evenly")
    group.add_argument("--slow-threshold", type=_duration,
                       help="duration from which a trace is slow, e.g. 1s (default: 1s; for report --config, "
                            "the config's latency policy's threshold_ms)")
    group.add_argument("--fan-out", type=int, default=3, help="downstream calls per item in fan-out routes")
    group.add_argument("--batch-spans", type=int, default=512, help="spans per export request")
    group.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    group.add_argument("--seed", type=int, default=1, help="the same seed sends the same traces")
    group.add_argument("--late-ratio", type=float, default=0.0,
                       help="share of non-root spans sent after their trace's root")
    group.add_argument("--late-delay", type=_duration, default=1.0,
                       help="how long after the root a late span is sent")
    group.add_argument("--flush-interval", type=_duration, default=0.2,
                       help="longest a partly filled request waits before it is sent")


def _traffic(args: argparse.Namespace, targets: list[str], slow_threshold_s: float | None = None):
    from tailsampler.loadgen.traffic import TrafficConfig

    by_spans = args.spans_per_second is not None
    return TrafficConfig(
        targets=tuple(targets),
        protocol=args.protocol,
        compress=args.gzip,
        traces_per_second=None if by_spans else (args.traces_per_second or 100.0),
        spans_per_second=args.spans_per_second,
        duration_s=None if args.count is not None else (args.duration or 10.0),
        count=args.count,
        shape=TrafficShape(args.error_ratio, args.slow_ratio, args.slow_threshold or slow_threshold_s or 1.0, args.fan_out),
        batch_spans=args.batch_spans,
        concurrency=args.concurrency,
        seed=args.seed,
        late_ratio=args.late_ratio,
        late_delay_s=args.late_delay,
        flush_interval_s=args.flush_interval,
    )


def _watch(progress: RunProgress, traffic) -> Callable[[object, float], None]:
    """The progress bar's update from a traffic run: by time, or by traces for a count."""
    def watch(result, elapsed: float) -> None:
        progress.update(elapsed if traffic.count is None else result.traces, result.spans)

    return watch


def _bar(traffic, what: str) -> RunProgress:
    total = traffic.duration_s if traffic.count is None else traffic.count
    return RunProgress(what, total)


def _run(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.traffic import run_traffic

    traffic = _traffic(args, args.target)
    with _bar(traffic, "sending") as progress:
        result = asyncio.run(run_traffic(traffic, keep_ledger=False, watch=_watch(progress, traffic)))
        progress.finish(result.spans)
    print(json.dumps(result.summary(), indent=2))
    return 1 if result.failed_requests else 0


def _report(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.report import ReportOptions, run_report, slow_threshold_of, write_report

    if args.target and args.config:
        raise ValueError("give either --config (the report starts a collector) or --target (a running one)")
    if args.target and not args.sink:
        raise ValueError("with --target, give --sink: the address the collector's exporter sends to")
    traffic = _traffic(args, args.target or ["127.0.0.1:4317"], slow_threshold_of(args.config) if args.config else None)
    options = ReportOptions(
        traffic=traffic,
        config=args.config,
        targets=tuple(args.target or ()),
        sink=args.sink or "127.0.0.1:0",
        admin=args.admin,
        settle_s=args.settle,
        deadline_s=args.deadline,
        head_probability=args.head_probability,
    )
    with _bar(traffic, "sending") as progress:
        report = asyncio.run(run_report(options, watch=_watch(progress, traffic)))
        progress.finish(report.tail.spans_sent)
    write_report(report, args.json, args.markdown)
    print(report.markdown())
    return 0 if all(report.checks().values()) else 1


def _bench(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.bench import BenchOptions, bench_steps, run_bench
    from tailsampler.loadgen.bench_output import markdown, write_result

    settings = {"modes": tuple(args.modes.split(",")), "profile": args.profile, "workdir": args.workdir}
    for key in ("rounds", "spans_per_round", "concurrency"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    options = BenchOptions.smoke(**settings) if args.smoke else BenchOptions(**settings)
    with RunProgress("benchmark", bench_steps(options)) as progress:
        result = asyncio.run(run_bench(options, progress.update))
    write_result(result, args.json, args.markdown)
    print(markdown(result))
    missed = [label for label, target in result["targets"].items() if target["met"] is False]
    if missed:
        print(f"targets missed: {'; '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


def _hotpath(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.hotpath import run_stage

    result = run_stage(args.stage, args.spans, args.repeat)
    print(json.dumps(dataclasses.asdict(result)))
    return 0


def _redis_cost(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.redis_cost import measure

    cost = measure(args.spans)
    print(json.dumps({**dataclasses.asdict(cost), "total": cost.total}))
    return 0


def _null_server(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.sink import NullServer

    async def serve() -> None:
        server = NullServer()
        await server.start(args.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(serve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailsampler-loadgen", description=__doc__, formatter_class=DefaultsFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", formatter_class=DefaultsFormatter, help="send realistic OTLP traffic to running collectors")
    _traffic_arguments(run, targets_required=True)
    run.set_defaults(handler=_run)

    report = commands.add_parser(
        "report", formatter_class=DefaultsFormatter, help="sampling quality through a collector, beside head sampling")
    _traffic_arguments(report, targets_required=False)
    report.add_argument("--config", type=Path,
                        help="start a collector from this config (its receivers, admin and exporters "
                             "are replaced by free loopback ports and the built-in sink)")
    report.add_argument("--sink", type=_endpoint,
                        help="where the built-in sink listens (with --target: where the running "
                             "collector's otlp exporter sends)")
    report.add_argument("--admin", type=_endpoint,
                        help="admin endpoint of the running collector: wait until its buffer is empty")
    report.add_argument("--settle", type=_duration, default=1.0,
                        help="seconds of quiet at the sink after which the run is over (with a "
                             "running collector and no --admin, use more than its decision_wait)")
    report.add_argument("--deadline", type=_duration, default=120.0, help="longest wait for the collector")
    report.add_argument("--head-probability", type=float, default=0.1, help="the head-based baseline's rate")
    report.add_argument("--json", type=Path, default=Path("loadgen-report.json"), help="write the report as JSON here")
    report.add_argument("--markdown", type=Path, default=Path("loadgen-report.md"), help="write the table here")
    report.set_defaults(handler=_report)

    bench = commands.add_parser(
        "bench", formatter_class=DefaultsFormatter, help="throughput, CPU, memory and latency beside a null server")
    bench.add_argument("--smoke", action="store_true", help="a few seconds' run (for CI)")
    bench.add_argument("--rounds", type=int, help="rounds measured (default: 5, with --smoke 1)")
    bench.add_argument("--spans-per-round", type=int, help="spans sent per round (default: 60000, with --smoke 16384)")
    bench.add_argument("--concurrency", type=int, help="requests in flight (default: 4)")
    bench.add_argument("--modes", default="memory,memory-contiguous,attributes,wal,redis,cluster,overload",
                       help="what to measure: memory,redis (the buffers, requests with each scope's spans "
                            "interleaved trace by trace), memory-contiguous (each trace's spans side by side), "
                            "attributes (memory with policies that read attributes), wal (memory with its "
                            "write-ahead log), cluster (1 agent and 3 agents on a Redis Cluster), "
                            "overload (3x the sustainable load)")
    bench.add_argument("--profile", action="store_true",
                       help="run the collectors under cProfile and list their hot spots")
    bench.add_argument("--workdir", type=Path, help="where configs, logs and profiles go")
    bench.add_argument("--json", type=Path, default=Path("bench-result.json"), help="write the result as JSON here")
    bench.add_argument("--markdown", type=Path, default=Path("bench-result.md"), help="write the tables here")
    bench.set_defaults(handler=_bench)

    hotpath = commands.add_parser(
        "hotpath", formatter_class=DefaultsFormatter, help="one stage of the per-span work in-process, for profilers and callgrind",
        description="Runs one stage on generated payloads: a warm-up pass, then --repeat passes. "
                    "Under valgrind --tool=callgrind, (instructions with --repeat 2 - with --repeat 0) "
                    "/ 2 / spans is the stage's instructions per span.",
    )
    hotpath.add_argument("stage", choices=STAGES)
    hotpath.add_argument("--spans", type=int, default=5_000, help="spans per pass (whole traces, so a few more)")
    hotpath.add_argument("--repeat", type=int, default=2, help="timed passes after the warm-up")
    hotpath.set_defaults(handler=_hotpath)

    redis_cost = commands.add_parser(
        "redis-cost", formatter_class=DefaultsFormatter,
        help="Redis's instructions per span for the Redis buffer's work, under callgrind",
        description="Starts a throwaway Redis under valgrind --tool=callgrind, appends fresh requests "
                    "through a Redis buffer, then claims and settles every trace, and prints Redis's "
                    "instructions per span for each phase (append, decide) as JSON. Needs valgrind.",
    )
    redis_cost.add_argument("--spans", type=int, default=20_000, help="spans appended (whole traces, so a few more)")
    redis_cost.set_defaults(handler=_redis_cost)

    null = commands.add_parser(
        "null-server", formatter_class=DefaultsFormatter, help="an OTLP/gRPC server that parses requests and answers")
    null.add_argument("--listen", type=_endpoint, default="127.0.0.1:4317")
    null.set_defaults(handler=_null_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, ProcessFailed) as exc:
        print(f"tailsampler-loadgen: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
