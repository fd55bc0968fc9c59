"""``tailsampler-loadgen report``: traffic through a collector into the sink, then the quality table.

Either the report starts a collector itself (from a config file, or the example policies), with
its receivers and admin on free loopback ports and its exporters replaced by the sink; or it
drives a running collector whose exporter already points at the sink address given.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tailsampler.loadgen.processes import (
    AdminClient,
    CollectorProcess,
    RedisServer,
    collector_config,
    example_policies,
)
from tailsampler.loadgen.quality import QualityReport, head_outcome, tail_outcome
from tailsampler.loadgen.sink import Sink
from tailsampler.loadgen.traffic import TrafficConfig, TrafficResult, Watch, run_traffic


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """``config``: start a collector from this file; ``targets``: drive a running one instead.

    ``settle_s`` is how long the sink must stay quiet before the run counts as finished; with a
    collector whose admin endpoint is known, the buffer must also be empty.
    """

    traffic: TrafficConfig
    config: Path | None = None
    targets: tuple[str, ...] = ()
    sink: str = "127.0.0.1:0"
    admin: str | None = None
    settle_s: float = 1.0
    deadline_s: float = 120.0
    head_probability: float = 0.1
    workdir: Path | None = None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the collector config: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections")
    return data


def slow_threshold_of(path: Path) -> float | None:
    """The threshold of the config's first latency policy (anywhere in its policy tree), in
    seconds: what the report's slow traffic must reach to be kept as slow."""
    policies = (_read_config(path).get("tail_sampling") or {}).get("policies") or []
    pending = list(policies)
    while pending:
        policy = pending.pop(0)
        if not isinstance(policy, dict):
            continue
        if policy.get("type") == "latency" and isinstance(policy.get("latency"), dict):
            threshold = policy["latency"].get("threshold_ms")
            if isinstance(threshold, (int, float)) and threshold > 0:
                return threshold / 1000
        for value in policy.values():  # and, not, composite: their sub-policies
            if isinstance(value, dict):
                pending += [v for v in value.values() if isinstance(v, dict)]
                pending += [item for v in value.values() if isinstance(v, list) for item in v]
    return None


def _own_config(options: ReportOptions, sink: str) -> dict[str, Any]:
    """The collector config the report runs: the user's file with loopback ports and the sink."""
    threshold_ms = int(options.traffic.shape.slow_threshold_s * 1000)
    generated = collector_config(sink, example_policies(threshold_ms))
    if options.config is None:
        return generated
    data = _read_config(options.config)
    for key in ("receivers", "exporters", "admin"):
        data[key] = generated[key]
    return data


async def run_report(options: ReportOptions, watch: Watch | None = None) -> QualityReport:
    """``watch`` follows the traffic as it is sent (a progress bar)."""
    sink = Sink()
    sink_endpoint = await sink.start(options.sink)
    collector: CollectorProcess | None = None
    redis: RedisServer | None = None
    try:
        traffic = options.traffic
        if not options.targets:
            workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tailsampler-report-"))
            config = _own_config(options, sink_endpoint)
            buffer = config.get("buffer")
            if isinstance(buffer, dict) and buffer.get("type") == "redis":
                # a shared buffer's config names the fleet's Redis: the report runs on one of its own
                redis = await RedisServer(workdir / "redis").start()
                buffer.update(url=redis.url, cluster=False)
            collector = await CollectorProcess(config, workdir).start()
            endpoint = collector.grpc_endpoint if traffic.protocol == "grpc" else collector.http_endpoint
            traffic = dataclasses.replace(traffic, targets=(endpoint,))
        else:
            traffic = dataclasses.replace(traffic, targets=options.targets)
        result = await run_traffic(traffic, watch=watch)
        settled = await _settle(options, sink, collector)
        stats = await collector.admin.stats() if collector else None
    finally:
        if collector is not None:
            await collector.stop()
        if redis is not None:
            await redis.stop()
        await sink.stop()
    return QualityReport(
        tail=tail_outcome(result.ledger, sink.spans),
        head=head_outcome(result.ledger, options.head_probability),
        head_probability=options.head_probability,
        run=_run_facts(traffic, result, settled, stats, sink_endpoint),
    )


async def _settle(options: ReportOptions, sink: Sink, collector: CollectorProcess | None) -> bool:
    """Wait until the collector has decided everything and the sink has gone quiet."""
    if collector is None and options.admin is None:
        return await sink.wait_quiet(options.settle_s, options.deadline_s)
    admin = collector.admin if collector is not None else AdminClient(options.admin or "")

    async def drained() -> bool:
        return await admin.buffered_traces() == 0

    try:
        return await sink.wait_quiet(options.settle_s, options.deadline_s, drained)
    finally:
        if collector is None:  # a running collector's client, made here (a started one's closes with it)
            await admin.close()


def _run_facts(traffic: TrafficConfig, result: TrafficResult, settled: bool,
               stats: dict[str, Any] | None, sink: str) -> dict[str, object]:
    shape = traffic.shape
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": list(traffic.targets),
        "protocol": traffic.protocol,
        "sink": sink,
        "error_ratio": shape.error_ratio,
        "slow_ratio": shape.slow_ratio,
        "slow_threshold_s": shape.slow_threshold_s,
        "fan_out": shape.fan_out,
        "late_ratio": traffic.late_ratio,
        "seed": traffic.seed,
        "traffic": result.summary(),
        "settled": settled,
        "collector_stats": stats,
    }


def write_report(report: QualityReport, json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(report.to_dict())) + b"\n")
    if markdown_path is not None:
        markdown_path.write_text("# Sampling quality\n\n" + report.markdown() + "\n")
