"""The collector's YAML config: shaped like an OpenTelemetry Collector config, checked whole.

Every problem in a file is reported at once, each naming the file, the key path inside it and
what was expected, so that ``tailsampler validate`` and ``serve`` refuse a bad file with messages
an SRE can act on in one round.

The ``tail_sampling`` section keeps the OpenTelemetry Collector processor's keys, but most of them
steer the buffer and the decision loop rather than the policies: they are decoded here, and the
buffers receive them resolved into one ``BufferLimits`` value.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from tailsampler.collector import otelcol
from tailsampler.collector.overload import OverloadConfig
from tailsampler.collector.wal_config import WalConfig
from tailsampler.common.confmap import expand, redact_url
from tailsampler.common.durations import Duration
from tailsampler.common.endpoints import Endpoint
from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect, enc_hook
from tailsampler.policies import PolicyContext, PolicySpec, RecordingConfig, never_keeps, policy_problems
from tailsampler.storage import ExporterSpec, exporter_names


TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
_MAX_SHARDS = 16384  # a Redis Cluster's hash slots: more shards than slots share slots for nothing


class TlsServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A listener's TLS, with the OpenTelemetry Collector's ``configtls`` server keys.

    ``client_ca_file`` turns on mutual TLS: a client without a certificate signed by it is refused.
    With ``reload_interval`` the files are checked that often (on the next new connection) and
    re-read when they changed, so a rotated certificate is used without a restart; 0 never."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    min_version: str | float = "1.2"  # YAML reads an unquoted 1.2 as a number
    reload_interval: Duration = Duration(0.0)

    def __post_init__(self) -> None:
        version = f"{self.min_version:.1f}" if isinstance(self.min_version, float) else self.min_version
        if version not in TLS_VERSIONS:
            raise ValueError(f"min_version: expected one of {', '.join(TLS_VERSIONS)}, got {self.min_version!r}")
        self.min_version = version
        if self.reload_interval < 0:
            raise ValueError("reload_interval cannot be negative")


class BearerAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Requests must carry ``Authorization: Bearer <token>`` with one of these tokens, as the
    Collector's ``bearertokenauth`` extension checks it. ``bearer_tokens_file`` holds one token a
    line and is re-read when it changes."""

    bearer_tokens: list[str] = msgspec.field(default_factory=list)
    bearer_tokens_file: str | None = None

    def __post_init__(self) -> None:
        if self.bearer_tokens and self.bearer_tokens_file:
            raise ValueError("give bearer_tokens or bearer_tokens_file, not both")
        if not self.bearer_tokens and not self.bearer_tokens_file:
            raise ValueError("give bearer_tokens or bearer_tokens_file (an auth block without tokens would let no one in)")
        if any(not token.strip() for token in self.bearer_tokens):
            raise ValueError("bearer_tokens: a token cannot be empty (is its environment variable set?)")


class AdminAuthConfig(BearerAuthConfig):
    """The admin API's token: every path but ``/health`` and ``/health/ready`` needs it; with
    ``protect_metrics: false`` Prometheus may scrape ``/metrics`` without it."""

    protect_metrics: bool = True


class _Listener(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every listener bounds: its TLS, its open connections and how long one may sit idle."""

    tls: TlsServerConfig | None = None
    max_connections: int = 1000
    idle_timeout: Duration = Duration(60.0)


class _OtlpListener(_Listener, kw_only=True):
    """What an OTLP listener lets in at once: requests past either bound get a retryable
    UNAVAILABLE / 503 before their body is read, so memory stays bounded under any load."""

    max_requests_in_flight: int = 64
    max_bytes_in_flight_mib: float = 64.0


class GrpcReceiverConfig(_OtlpListener, kw_only=True):
    endpoint: Endpoint = Endpoint("localhost", 4317)
    max_recv_msg_size_mib: float = 4.0
    max_concurrent_streams: int = 16
    handshake_timeout: Duration = Duration(10.0)
    idle_timeout: Duration = Duration(300.0)


class HttpReceiverConfig(_OtlpListener, kw_only=True):
    endpoint: Endpoint = Endpoint("localhost", 4318)
    max_request_body_size_mib: float = 20.0
    read_header_timeout: Duration = Duration(10.0)


class OtlpReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    grpc: GrpcReceiverConfig | None = msgspec.field(default_factory=GrpcReceiverConfig)
    http: HttpReceiverConfig | None = msgspec.field(default_factory=HttpReceiverConfig)
    auth: BearerAuthConfig | None = None


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
    overload: OverloadConfig | None = None


Overflow = Literal["decide_early", "backpressure"]


class BufferConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where spans wait. ``overflow`` says what a full buffer does: ``decide_early`` decides the
    oldest traces at once, ``backpressure`` refuses new traces with a retryable error.
    ``tail_sampling.block_on_overflow: true`` selects ``backpressure`` too. ``wal`` (memory only)
    logs every request before it is acknowledged, so a restarted agent loses nothing it took."""

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
    wal: WalConfig | None = None

    def __post_init__(self) -> None:
        # A request costs one script call per shard its traces fall in, and on one server shards
        # buy nothing for it; on a cluster they are what spreads traces over the masters.
        if self.shards is None:
            self.shards = 16 if self.cluster else 1


class AdminConfig(_Listener, kw_only=True):
    """The admin listener. ``allowed_hosts`` are the names a request's ``Host`` header may carry
    besides IP addresses, ``localhost`` and the names this host and the endpoint go by, so a web
    page cannot reach the API through DNS rebinding; ``"*"`` allows any."""

    endpoint: Endpoint = Endpoint("127.0.0.1", 13133)
    auth: AdminAuthConfig | None = None
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    max_connections: int = 64
    read_header_timeout: Duration = Duration(10.0)


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True):
    shutdown_timeout: Duration = Duration(30.0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


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


@dataclass(frozen=True)
class Loaded:
    """A config as read from a file: ours, or an OpenTelemetry Collector config translated."""

    config: Config
    translated: dict[str, Any] | None = None  # a Collector config's data, as our config
    warnings: tuple[str, ...] = ()  # what of a Collector config does not run here, harmlessly


def parse_config(text: str, source: str = "<config>") -> Config:
    return read(_yaml(text, source), source).config


def load_config(path: str | Path) -> Config:
    return read_config(path).config


def read_config(path: str | Path) -> Loaded:
    return read(read_yaml(path), str(path))


def read(data: Any, source: str, processor: str | None = None) -> Loaded:
    """Our config from a file's data, which may be an OpenTelemetry Collector config (then
    ``processor`` may name the tail_sampling processor to run instead of its pipeline's); every
    problem is reported at the key path the file itself has."""
    if not otelcol.is_collector_config(data):
        return Loaded(check_config(data, source))
    translation = otelcol.translate(data, processor)
    problems = list(translation.problems)
    try:
        config = check_config(translation.native, source)
    except ConfigError as exc:
        for problem in exc.problems:
            origin = translation.origin(problem.path)
            # what the file did not write follows from what could not be carried over: said already
            if origin is not None or not translation.problems:
                problems.append(Problem(problem.path if origin is None else origin, problem.message))
    if problems:
        raise ConfigError(*problems, source=source)
    return Loaded(config, translation.native, tuple(f"{source}: {w}" for w in translation.warnings))


def check_config(data: Any, source: str) -> Config:
    """Expand ``${env:...}`` / ``${file:...}`` references, then decode and check a whole config
    of ours, raising one ConfigError with every problem in it. No message carries a value that
    came from the environment or a file."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"(top level): expected a mapping of sections, got {type(data).__name__}", source=source)
    data, expansion = expand(data)
    unexpanded = expansion.failed_paths
    decoding: list[Problem] = []
    config = collect(data, Config, "", decoding)
    section = data.get("tail_sampling")
    if isinstance(section, dict) and isinstance(section.get("policies"), list):
        # each policy that decodes is built on its own, so one bad policy does not hide another's problems
        decoding += policy_problems(section["policies"], "tail_sampling.policies", PolicyContext(clock=time.monotonic))
    if config is not INVALID:
        decoding += _cross_checks(config)
    # a reference that could not be expanded is reported once, not again as a badly typed value
    problems = expansion.problems + [p for p in decoding if p.path not in unexpanded]
    if problems:
        raise ConfigError(*(expansion.redact(p) for p in problems), source=source)
    return config


def config_hash(config: Config, source: str = "") -> str:
    """A short digest of the config an agent runs, so that agents given the same file show the
    same hash: of the file as written when there is one (values taken from the environment or
    from files, secrets among them, never enter it), else of the decoded config."""
    if source:
        try:
            return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]
        except OSError:
            pass
    return hashlib.sha256(msgspec.json.encode(config, enc_hook=enc_hook)).hexdigest()[:12]


def config_warnings(config: Config) -> list[Problem]:
    """What is allowed but almost certainly not meant: ``validate`` prints it, ``serve`` and a
    reload log it."""
    reason = never_keeps(config.tail_sampling.policies)
    if reason:
        return [Problem("tail_sampling.policies", f"no trace can ever be kept: {reason}")]
    return []


def sampling_problems(ts: TailSamplingConfig, root: str) -> list[Problem]:
    """The checks of a ``tail_sampling`` section beyond its types (ours, and a Collector's block
    that ``validate --otel-collector-config`` reads)."""
    problems: list[Problem] = []
    if not ts.policies:
        problems.append(Problem(
            f"{root}.policies",
            "at least one policy is required (the OpenTelemetry Collector's tail_sampling processor "
            "lists policies as required too); to keep every trace write [{name: all, type: always_sample}]",
        ))
    if ts.overload is not None:
        problems += ts.overload.problems(f"{root}.overload")
    return problems


def _cross_checks(config: Config) -> list[Problem]:
    """Rules that span several keys, beyond what the types say."""
    ts = config.tail_sampling
    problems: list[Problem] = sampling_problems(ts, "tail_sampling")
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
    if config.buffer.wal is not None:
        if config.buffer.type == "redis":
            problems.append(Problem(
                "buffer.wal", "a write-ahead log is for the memory buffer; the redis buffer's spans live in Redis"
            ))
        problems += [Problem(f"buffer.wal.{key}", message) for key, message in config.buffer.wal.problems()]
    if config.buffer.type == "redis":
        for key in ("shards", "lease", "timeout"):
            if getattr(config.buffer, key) <= 0:
                problems.append(Problem(f"buffer.{key}", "must be greater than 0"))
        if (config.buffer.shards or 0) > _MAX_SHARDS:
            problems.append(Problem("buffer.shards", f"must be at most {_MAX_SHARDS}, a Redis Cluster's slots: each shard is one slot"))
        if config.buffer.wait_replicas < 0:
            problems.append(Problem("buffer.wait_replicas", "must be 0 (do not wait) or more"))
        scheme = config.buffer.url.partition("://")[0]
        if scheme not in ("redis", "rediss", "unix"):
            url = redact_url(config.buffer.url)
            problems.append(Problem("buffer.url", f"expected a redis://, rediss:// or unix:// URL, got {url!r}"))
    if not config.exporters:
        problems.append(Problem("exporters", "at least one exporter is required, or kept traces go nowhere"))
    try:
        exporter_names(config.exporters)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        problems.append(Problem(key, problem))
    problems += _listener_problems(config)
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


def _listener_problems(config: Config) -> list[Problem]:
    """Bounds that must be positive, and what grpcio cannot do."""
    otlp = config.receivers.otlp
    listeners: list[tuple[str, _Listener | None]] = [
        ("receivers.otlp.grpc", otlp.grpc), ("receivers.otlp.http", otlp.http), ("admin", config.admin),
    ]
    problems: list[Problem] = []
    for key, listener in listeners:
        if listener is None:
            continue
        for name in ("max_connections", "idle_timeout", "max_requests_in_flight", "max_bytes_in_flight_mib",
                     "max_concurrent_streams", "handshake_timeout", "read_header_timeout"):
            if getattr(listener, name, 1) <= 0:
                problems.append(Problem(f"{key}.{name}", "must be greater than 0"))
    if otlp.grpc is not None and otlp.grpc.tls is not None and otlp.grpc.tls.min_version == "1.3":
        problems.append(Problem(
            "receivers.otlp.grpc.tls.min_version",
            "grpcio cannot be told to refuse TLS 1.2; it speaks 1.2 and 1.3 and never anything older (use 1.2)",
        ))
    return problems
