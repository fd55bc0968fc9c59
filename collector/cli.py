"""The ``tailsampler`` command line: serve, validate, stats, traces, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
import urllib.error
import urllib.request

from tailsampler.collector import logs
from tailsampler.collector.config import config_warnings, load_config
from tailsampler.collector.summary import version
from tailsampler.common.errors import ConfigError
from tailsampler.storage import ExporterSetupError


def _print_problems(exc: ConfigError) -> None:
    """A bad config, one problem a line, as ``serve`` and ``validate`` both report it."""
    print(exc, file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    logs.configure(config.service)
    if args.workers > 1:
        from tailsampler.collector.workers import run_workers

        return run_workers(args.config, config, args.workers)
    return asyncio.run(_run(config, args.config, args.worker))


async def _run(config, source: str, worker: int | None) -> int:
    from tailsampler.collector.app import Collector

    collector = Collector(config, reuse_port=worker is not None, source=source, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[object]] = set()
    started = False

    def reload() -> None:  # SIGHUP: read the config file again (reloads queue up, one at a time)
        if not started:
            logging.getLogger("tailsampler").warning("SIGHUP while starting: ignored, send it again once started")
            return
        task = asyncio.create_task(collector.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)  # at once: SIGHUP's default would end the process
    try:
        await collector.start()
    except (ExporterSetupError, OSError) as exc:
        print(f"tailsampler: cannot start: {exc}", file=sys.stderr)
        await collector.stop()
        return 2
    started = True
    await stop.wait()
    logging.getLogger("tailsampler").info("shutting down")
    loop.remove_signal_handler(signal.SIGHUP)
    await collector.stop()
    return 0


def _validate(args: argparse.Namespace) -> int:
    if args.otel_collector_config:
        return _validate_otel(args)
    if not args.config:
        print("tailsampler validate: give a CONFIG file or --otel-collector-config FILE", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    for warning in config_warnings(config):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok")
    return 0


def _validate_otel(args: argparse.Namespace) -> int:
    from tailsampler.collector.otelconfig import convert_otel_collector_config, validate_otel_collector_config

    path = args.otel_collector_config
    problems = validate_otel_collector_config(path)
    for problem in problems:
        print(f"invalid: {problem}", file=sys.stderr)
    if problems:
        return 1
    if args.write:
        try:
            converted = convert_otel_collector_config(path, args.processor)
        except ConfigError as exc:
            print(f"tailsampler: {exc}", file=sys.stderr)
            return 1
        with open(args.write, "w") as out:
            out.write(converted)
        print(f"{path}: ok; wrote {args.write}")
        return 0
    print(f"{path}: ok")
    return 0


def _stats(args: argparse.Namespace) -> int:
    url = f"http://{args.admin}/api/v1/stats"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            stats = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        print(f"tailsampler: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    config = stats.get("config", {})
    print(f"config           {config.get('hash', '?')} from {config.get('file') or '(no file)'}")
    if "fleet" in stats:
        print(f"fleet of {stats['fleet']['agents']} agent(s) sharing one buffer (this agent: --json)")
        configs = stats["fleet"].get("configs", {})
        if len(configs) > 1:
            print(f"the fleet runs {len(configs)} different configs:")
            for digest, agents in sorted(configs.items()):
                print(f"  {digest}  {', '.join(agents)}")
        stats = stats["fleet"]
    spans, traces, buffered = stats["spans"], stats["traces"], stats["buffer"]
    print(f"spans received   {spans['received']}")
    print(f"spans refused    {sum(spans['refused'].values())} {spans['refused'] or ''}")
    print(f"late spans       kept {spans['late'].get('kept', 0)}, dropped {spans['late'].get('dropped', 0)}")
    print(f"traces kept      {traces['kept']}")
    print(f"traces dropped   {traces['dropped']}")
    print(f"buffer           {buffered['traces']} traces, {buffered['bytes']} bytes")
    print("by policy:")
    for policy, counts in sorted(traces["by_policy"].items()):
        print(f"  {policy:24} kept {counts['kept']:>10}  dropped {counts['dropped']:>10}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailsampler", description="Tail-based sampling trace collector")
    parser.add_argument("--version", action="version", version=f"tailsampler {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the collector")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.add_argument("--workers", type=int, default=1, help="agent processes sharing the ports (redis buffer only)")
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # index, set by --workers
    serve.set_defaults(func=_serve)

    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("config", nargs="?", help="YAML config file")
    validate.add_argument(
        "--otel-collector-config", metavar="FILE", help="check the tail_sampling processors of an OpenTelemetry Collector config"
    )
    validate.add_argument("--write", metavar="OUT", help="with --otel-collector-config: write it as a tailsampler config")
    validate.add_argument("--processor", help="with --write: which tail_sampling processor, when there are several")
    validate.set_defaults(func=_validate)

    stats = sub.add_parser("stats", help="sampling stats from a running collector's admin listener")
    stats.add_argument("--admin", default="127.0.0.1:13133", help="admin endpoint host:port")
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    stats.set_defaults(func=_stats)

    for name, module, summary in (
        ("traces", "tailsampler.collector.traces_cmd", "list and show kept traces in the SQLite store"),
        ("evaluate", "tailsampler.collector.evaluate", "run the configured policies over traces saved in OTLP files"),
    ):
        command = sub.add_parser(name, help=summary)
        handler = importlib.import_module(module)
        handler.configure(command)
        command.set_defaults(func=handler.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
