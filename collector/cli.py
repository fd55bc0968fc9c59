"""The ``tailsampler`` command line: serve, validate, stats, traces, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys

from tailsampler.collector import logs
from tailsampler.collector.config import config_warnings, read_config
from tailsampler.collector.summary import version
from tailsampler.common.errors import ConfigError
from tailsampler.storage import ExporterSetupError


def _print_problems(exc: ConfigError) -> None:
    """A bad config, one problem a line, as ``serve`` and ``validate`` both report it."""
    print(exc, file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    try:
        loaded = read_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    config = loaded.config
    logs.configure(config.service)
    for warning in loaded.warnings:
        logging.getLogger("tailsampler").warning("not run: %s", warning)
    if args.workers > 1:
        from tailsampler.collector.workers import run_workers

        return run_workers(args.config, config, args.workers)
    return asyncio.run(_run(config, args.config, args.worker))


async def _run(config, source: str, worker: int | None) -> int:
    from tailsampler.collector.app import Collector
    from tailsampler.collector.buffer import WalError

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
    except (ExporterSetupError, OSError, WalError) as exc:
        print(f"tailsampler: cannot start: {exc}", file=sys.stderr)
        logging.disable(logging.INFO)  # nothing was taken in: the one line above says it all
        await collector.stop()
        return 2
    started = True
    await stop.wait()
    log = logging.getLogger("tailsampler")
    log.info("shutting down (a second signal exits at once)")
    loop.remove_signal_handler(signal.SIGHUP)
    stop.clear()
    shutdown = asyncio.create_task(collector.stop())
    second = asyncio.create_task(stop.wait())
    await asyncio.wait({shutdown, second}, return_when=asyncio.FIRST_COMPLETED)
    if not shutdown.done():
        log.error("second signal: exiting before the shutdown finished")
        return 1
    second.cancel()
    return 0


def _validate(args: argparse.Namespace) -> int:
    if args.otel_collector_config:
        return _validate_otel(args)
    if not args.config:
        print("tailsampler validate: give a CONFIG file or --otel-collector-config FILE", file=sys.stderr)
        return 2
    try:
        loaded = read_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    for warning in loaded.warnings:
        print(f"not run: {warning}", file=sys.stderr)
    for warning in config_warnings(loaded.config):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    if loaded.translated is not None:
        print(
            f"{args.config}: ok, an OpenTelemetry Collector config: `tailsampler serve --config {args.config}` runs its "
            f"traces pipeline as it is; `tailsampler validate --otel-collector-config {args.config} --write OUT` "
            "writes it as a tailsampler config"
        )
        return 0
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

    for name, module, summary in (
        ("stats", "tailsampler.collector.stats_cmd", "sampling stats from a running collector's admin listener"),
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
