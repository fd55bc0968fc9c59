"""The ``tailsampler-loadgen`` command line: send traffic, report sampling quality, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from pathlib import Path

from tailsampler.common.durations import Duration
from tailsampler.loadgen.hotpath import STAGES
from tailsampler.loadgen.model import TrafficShape
from tailsampler.loadgen.processes import ProcessFailed
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
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    group.add_argument("--gzip", action="store_true", help="gzip HTTP request bodies")
    rate = group.add_mutually_exclusive_group()
    rate.add_argument("--traces-per-second", type=float)
    rate.add_argument("--spans-per-second", type=float)
    bound = group.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=_duration, help="how long to send (e.g. 30s); default 10s")
    bound.add_argument("--count", type=int, help="how many traces to send")
    group.add_argument("--error-ratio", type=float, default=0.001, help="share of failing traces")
    group.add_argument("--slow-ratio", type=float, default=0.01, help="share of slow traces")
    group.add_argument("--slow-threshold", type=_duration, default=1.0,
                       help="duration from which a trace is slow (e.g. 1s)")
    group.add_argument("--fan-out", type=int, default=3, help="downstream calls per item in fan-out routes")
    group.add_argument("--batch-spans", type=int, default=512, help="spans per export request")
    group.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    group.add_argument("--seed", type=int, default=1)
    group.add_argument("--late-ratio", type=float, default=0.0,
                       help="share of non-root spans sent after their trace's root")
    group.add_argument("--late-delay", type=_duration, default=1.0,
                       help="how long after the root a late span is sent")
    group.add_argument("--flush-interval", type=_duration, default=0.2,
                       help="longest a partly filled request waits before it is sent")


def _traffic(args: argparse.Namespace, targets: list[str]):
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
        shape=TrafficShape(args.error_ratio, args.slow_ratio, args.slow_threshold, args.fan_out),
        batch_spans=args.batch_spans,
        concurrency=args.concurrency,
        seed=args.seed,
        late_ratio=args.late_ratio,
        late_delay_s=args.late_delay,
        flush_interval_s=args.flush_interval,
    )


def _run(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.traffic import run_traffic

    result = asyncio.run(run_traffic(_traffic(args, args.target), keep_ledger=False))
    print(json.dumps(result.summary(), indent=2))
    return 1 if result.failed_requests else 0


def _report(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.report import ReportOptions, run_report, write_report

    if args.target and args.config:
        raise ValueError("give either --config (the report starts a collector) or --target (a running one)")
    if args.target and not args.sink:
        raise ValueError("with --target, give --sink: the address the collector's exporter sends to")
    options = ReportOptions(
        traffic=_traffic(args, args.target or ["127.0.0.1:4317"]),
        config=args.config,
        targets=tuple(args.target or ()),
        sink=args.sink or "127.0.0.1:0",
        admin=args.admin,
        settle_s=args.settle,
        deadline_s=args.deadline,
        head_probability=args.head_probability,
    )
    report = asyncio.run(run_report(options))
    write_report(report, args.json, args.markdown)
    print(report.markdown())
    return 0 if all(report.checks().values()) else 1


def _bench(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.bench import BenchOptions, run_bench
    from tailsampler.loadgen.bench_output import markdown, write_result

    settings = {"modes": tuple(args.modes.split(",")), "profile": args.profile, "workdir": args.workdir}
    for key in ("rounds", "spans_per_round", "concurrency"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    options = BenchOptions.smoke(**settings) if args.smoke else BenchOptions(**settings)
    result = asyncio.run(run_bench(options))
    write_result(result, args.json, args.markdown)
    print(markdown(result))
    return 0


def _hotpath(args: argparse.Namespace) -> int:
    from tailsampler.loadgen.hotpath import run_stage

    result = run_stage(args.stage, args.spans, args.repeat)
    print(json.dumps(dataclasses.asdict(result)))
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
    parser = argparse.ArgumentParser(prog="tailsampler-loadgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="send realistic OTLP traffic to running collectors")
    _traffic_arguments(run, targets_required=True)
    run.set_defaults(handler=_run)

    report = commands.add_parser("report", help="sampling quality through a collector, beside head sampling")
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
                        help="quiet time at the sink after which the run is over (default 1s; with a "
                             "running collector and no --admin, use more than its decision_wait)")
    report.add_argument("--deadline", type=_duration, default=120.0, help="longest wait for the collector")
    report.add_argument("--head-probability", type=float, default=0.1, help="the head-based baseline's rate")
    report.add_argument("--json", type=Path, default=Path("loadgen-report.json"))
    report.add_argument("--markdown", type=Path, default=Path("loadgen-report.md"))
    report.set_defaults(handler=_report)

    bench = commands.add_parser("bench", help="throughput, CPU, memory and latency beside a null server")
    bench.add_argument("--smoke", action="store_true", help="a few seconds' run (for CI)")
    bench.add_argument("--rounds", type=int)
    bench.add_argument("--spans-per-round", type=int)
    bench.add_argument("--concurrency", type=int)
    bench.add_argument("--modes", default="memory,redis,overload",
                       help="what to measure: memory,redis (the buffers), overload (3x the sustainable load)")
    bench.add_argument("--profile", action="store_true",
                       help="run the collectors under cProfile and list their hot spots")
    bench.add_argument("--workdir", type=Path, help="where configs, logs and profiles go")
    bench.add_argument("--json", type=Path, default=Path("bench-result.json"))
    bench.add_argument("--markdown", type=Path, default=Path("bench-result.md"))
    bench.set_defaults(handler=_bench)

    hotpath = commands.add_parser(
        "hotpath", help="one stage of the per-span work in-process, for profilers and callgrind",
        description="Runs one stage on generated payloads: a warm-up pass, then --repeat passes. "
                    "Under valgrind --tool=callgrind, (instructions with --repeat 2 - with --repeat 0) "
                    "/ 2 / spans is the stage's instructions per span.",
    )
    hotpath.add_argument("stage", choices=STAGES)
    hotpath.add_argument("--spans", type=int, default=5_000, help="spans per pass (whole traces, so a few more)")
    hotpath.add_argument("--repeat", type=int, default=2, help="timed passes after the warm-up")
    hotpath.set_defaults(handler=_hotpath)

    null = commands.add_parser("null-server", help="an OTLP/gRPC server that parses requests and answers")
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
