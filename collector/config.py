"""The collector's YAML config: shaped like an OpenTelemetry Collector config, checked whole.

Every problem in a file is reported at once, each naming the file, the key path inside it and
what was expected, so that ``tailsampler validate`` and ``serve`` refuse a bad file with messages
an SRE can act on in one round.

The ``tail_sampling`` section keeps the OpenTelemetry Collector processor's keys, but most of them
steer the buffer and the decision loop rather than the policies: they are decoded here, and the
buffers receive them resolved into one ``BufferLimits`` value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from tailsampler.common.durations import Duration
from tailsampler.common.endpoints import Endpoint
from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect
from tailsampler.policies import PolicyContext, PolicySpec, RecordingConfig, policy_problems
from tailsampler.storage import ExporterSpec, exporter_names


class GrpcReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: Endpoint = Endpoint("0.0.0.0", 4317)
    max_recv_msg_size_mib: float = 4.0


class HttpReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: Endpoint = Endpoint("0.0.0.0", 4318)
    max_request_body_size_mib: float = 20.0


class OtlpReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    grpc: GrpcReceiverConfig | None = msgspec.field(default_factory=GrpcReceiverConfig)
    http: HttpReceiverConfig | None = msgspec.field(default_factory=HttpReceiverConfig)


class ReceiversConfig(msgspec.Struct, forbid_unknown_fields=True):
    otlp: OtlpReceiverConfig = msgspec.field(default_factory=OtlpReceiverConfig)


class DecisionCacheConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Kept and dropped decisions remembered for late spans; the reference's keys plus a TTL."""

    sampled_cache_size: int = 100_000
    non_sampled_cache_size: int = 1_000_000
    ttl: Duration = Duration(300.0)


class TailSamplingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The OpenTelemetry Collector tail_sampling processor's keys, with its defaults."""

    decision_wait: Duration = Duration(30.0)
    decision_wait_after_root_received: Duration = Duration(0.0)
    num_traces: int = 50_000
    expected_new_traces_per_sec: int = 0
    maximum_trace_size_bytes: int = 0
    sample_on_first_match: bool = False
    block_on_overflow: bool = False
    drop_pending_traces_on_shutdown: bool = False
    decision_cache: DecisionCacheConfig = msgspec.field(default_factory=DecisionCacheConfig)
    recording: RecordingConfig = msgspec.field(default_factory=RecordingConfig)
    policies: list[PolicySpec] = msgspec.field(default_factory=list)


Overflow = Literal["decide_early", "backpressure"]


class BufferConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where spans wait. ``overflow`` says what a full buffer does: ``decide_early`` decides the
    oldest traces at once, ``backpressure`` refuses new traces with a retryable error.
    ``tail_sampling.block_on_overflow: true`` selects ``backpressure`` too."""

    type: Literal["memory", "redis"] = "memory"
    tick: Duration = Duration(0.1)
    max_bytes: int = 512 * 1024 * 1024
    overflow: Overflow = "decide_early"
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    shards: int | None = None  # 1 on a single server, 16 on a cluster: see __post_init__
    lease: Duration = Duration(30.0)
    key_prefix: str = "ts"
    timeout: Duration = Duration(2.0)
    # an append is acknowledged once this many replicas of each master it wrote to have it (WAIT)
    wait_replicas: int = 0

    def __post_init__(self) -> None:
        # A request costs one script call per shard its traces fall in, and on one server shards
        # buy nothing for it; on a cluster they are what spreads traces over the masters.
        if self.shards is None:
            self.shards = 16 if self.cluster else 1


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: Endpoint = Endpoint("127.0.0.1", 13133)


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True):
    shutdown_timeout: Duration = Duration(30.0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _default_exporters() -> list[Any]:
    return [msgspec.convert({"type": "sqlite"}, ExporterSpec)]


class Config(msgspec.Struct, forbid_unknown_fields=True):
    receivers: ReceiversConfig = msgspec.field(default_factory=ReceiversConfig)
    tail_sampling: TailSamplingConfig = msgspec.field(default_factory=TailSamplingConfig)
    buffer: BufferConfig = msgspec.field(default_factory=BufferConfig)
    exporters: list[ExporterSpec] = msgspec.field(default_factory=_default_exporters)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    service: ServiceConfig = msgspec.field(default_factory=ServiceConfig)


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """Everything a buffer bounds and times, resolved from ``tail_sampling`` and ``buffer``: both
    buffers are built from this one value."""

    decision_wait: float
    decision_wait_after_root: float  # 0: off
    max_traces: int
    max_trace_bytes: int  # 0: off
    max_bytes: int
    overflow: Overflow
    tick: float
    decision_cache: DecisionCacheConfig

    @classmethod
    def of(cls, config: Config) -> "BufferLimits":
        ts = config.tail_sampling
        return cls(
            decision_wait=float(ts.decision_wait),
            decision_wait_after_root=float(ts.decision_wait_after_root_received),
            max_traces=ts.num_traces,
            max_trace_bytes=ts.maximum_trace_size_bytes,
            max_bytes=config.buffer.max_bytes,
            overflow="backpressure" if ts.block_on_overflow else config.buffer.overflow,
            tick=float(config.buffer.tick),
            decision_cache=ts.decision_cache,
        )


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}not valid YAML: {exc.problem or exc.context}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data; a file that cannot be read or parsed is a ConfigError naming it (and,
    for a syntax error, the line and column)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    return _yaml(text, str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    return check_config(_yaml(text, source), source)


def load_config(path: str | Path) -> Config:
    return check_config(read_yaml(path), str(path))


def check_config(data: Any, source: str) -> Config:
    """Decode and check a whole config, raising one ConfigError with every problem in it."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"(top level): expected a mapping of sections, got {type(data).__name__}", source=source)
    problems: list[Problem] = []
    config = collect(data, Config, "", problems)
    section = data.get("tail_sampling")
    if isinstance(section, dict) and isinstance(section.get("policies"), list):
        # each policy that decodes is built on its own, so one bad policy does not hide another's problems
        problems += policy_problems(section["policies"], "tail_sampling.policies", PolicyContext(clock=time.monotonic))
    if config is not INVALID:
        problems += _cross_checks(config)
    if problems:
        raise ConfigError(*problems, source=source)
    return config


def _cross_checks(config: Config) -> list[Problem]:
    """Rules that span several keys, beyond what the types say."""
    ts = config.tail_sampling
    problems: list[Problem] = []
    if ts.decision_wait <= 0:
        problems.append(Problem("tail_sampling.decision_wait", "must be greater than 0"))
    if ts.num_traces <= 0:
        problems.append(Problem("tail_sampling.num_traces", "must be greater than 0"))
    if ts.maximum_trace_size_bytes < 0:
        problems.append(Problem("tail_sampling.maximum_trace_size_bytes", "must be 0 (off) or positive"))
    if config.buffer.tick <= 0:
        problems.append(Problem("buffer.tick", "must be greater than 0"))
    if config.buffer.max_bytes <= 0:
        problems.append(Problem("buffer.max_bytes", "must be greater than 0"))
    if config.buffer.type == "redis":
        for key in ("shards", "lease", "timeout"):
            if getattr(config.buffer, key) <= 0:
                problems.append(Problem(f"buffer.{key}", "must be greater than 0"))
        if config.buffer.wait_replicas < 0:
            problems.append(Problem("buffer.wait_replicas", "must be 0 (do not wait) or more"))
        scheme = config.buffer.url.partition("://")[0]
        if scheme not in ("redis", "rediss", "unix"):
            problems.append(Problem("buffer.url", f"expected a redis://, rediss:// or unix:// URL, got {config.buffer.url!r}"))
    if not config.exporters:
        problems.append(Problem("exporters", "at least one exporter is required, or kept traces go nowhere"))
    try:
        exporter_names(config.exporters)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        problems.append(Problem(key, problem))
    otlp = config.receivers.otlp
    listeners = [
        (key, endpoint)
        for key, endpoint in (
            ("receivers.otlp.grpc.endpoint", otlp.grpc and otlp.grpc.endpoint),
            ("receivers.otlp.http.endpoint", otlp.http and otlp.http.endpoint),
            ("admin.endpoint", config.admin.endpoint),
        )
        if endpoint
    ]
    ports: list[tuple[str, int]] = []
    for key, endpoint in listeners:
        clash = next((other for other, used in ports if used == endpoint.port and endpoint.port != 0), None)
        if clash:
            problems.append(Problem(key, f"port {endpoint.port} is already used by {clash}"))
        ports.append((key, endpoint.port))
    return problems
