"""The collector's YAML config: shaped like an OpenTelemetry Collector config, decoded strictly.

Every error names the file, the key path inside it and what was expected, so that
``tailsampler validate`` and ``serve`` can refuse a bad file with a message an SRE can act on.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import yaml

from tailsampler.collector.durations import Duration
from tailsampler.collector.errors import ConfigError
from tailsampler.policies import PolicyContext, TailSamplingConfig, build_engine
from tailsampler.storage import ExporterSpec, exporter_names

T = TypeVar("T")


class GrpcReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str = "0.0.0.0:4317"
    max_recv_msg_size_mib: float = 4.0


class HttpReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str = "0.0.0.0:4318"
    max_request_body_size_mib: float = 20.0


class OtlpReceiverConfig(msgspec.Struct, forbid_unknown_fields=True):
    grpc: GrpcReceiverConfig | None = msgspec.field(default_factory=GrpcReceiverConfig)
    http: HttpReceiverConfig | None = msgspec.field(default_factory=HttpReceiverConfig)


class ReceiversConfig(msgspec.Struct, forbid_unknown_fields=True):
    otlp: OtlpReceiverConfig = msgspec.field(default_factory=OtlpReceiverConfig)


class BufferConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where spans wait. ``overflow`` says what a full buffer does: ``decide_early`` decides the
    oldest traces at once, ``backpressure`` refuses new traces with a retryable error.
    ``tail_sampling.block_on_overflow: true`` selects ``backpressure`` too."""

    type: Literal["memory", "redis"] = "memory"
    tick: Duration = Duration(0.1)
    max_bytes: int = 512 * 1024 * 1024
    overflow: Literal["decide_early", "backpressure"] = "decide_early"
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    shards: int | None = None  # 1 on a single server, 16 on a cluster: see __post_init__
    lease: Duration = Duration(30.0)
    key_prefix: str = "ts"
    timeout: Duration = Duration(2.0)

    def __post_init__(self) -> None:
        # A request costs one script call per shard its traces fall in, and on one server shards
        # buy nothing for it; on a cluster they are what spreads traces over the masters.
        if self.shards is None:
            self.shards = 16 if self.cluster else 1


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str = "127.0.0.1:13133"


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

    @property
    def overflow(self) -> str:
        return "backpressure" if self.tail_sampling.block_on_overflow else self.buffer.overflow


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Duration:
        return Duration.parse(obj)
    raise NotImplementedError(f"cannot decode {type_!r}")


_PATH = re.compile(r" - at `\$(.*)`$")


def decode(data: Any, type_: type[T], source: str, root: str = "") -> T:
    """Convert plain YAML data into ``type_``; errors read ``source: root.path: problem``."""
    try:
        return msgspec.convert(data, type_, dec_hook=_dec_hook, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        path = root
        if match:
            text = text[: match.start()]
            path = (root + match.group(1)).lstrip(".")
        raise ConfigError(f"{source}: {path or '(top level)'}: {text}") from None


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    config = decode(data, Config, source)
    _check(config, source)
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path))


def _check(config: Config, source: str) -> None:
    """Rules that span several keys, beyond what the types say."""
    ts = config.tail_sampling
    problems: list[tuple[str, str]] = []
    if ts.decision_wait <= 0:
        problems.append(("tail_sampling.decision_wait", "must be greater than 0"))
    if ts.num_traces <= 0:
        problems.append(("tail_sampling.num_traces", "must be greater than 0"))
    if ts.maximum_trace_size_bytes < 0:
        problems.append(("tail_sampling.maximum_trace_size_bytes", "must be 0 (off) or positive"))
    if config.buffer.tick <= 0:
        problems.append(("buffer.tick", "must be greater than 0"))
    if config.buffer.max_bytes <= 0:
        problems.append(("buffer.max_bytes", "must be greater than 0"))
    if config.buffer.type == "redis":
        for key in ("shards", "lease", "timeout"):
            if getattr(config.buffer, key) <= 0:
                problems.append((f"buffer.{key}", "must be greater than 0"))
        scheme = config.buffer.url.partition("://")[0]
        if scheme not in ("redis", "rediss", "unix"):
            problems.append(("buffer.url", f"expected a redis://, rediss:// or unix:// URL, got {config.buffer.url!r}"))
    if not config.exporters:
        problems.append(("exporters", "at least one exporter is required, or kept traces go nowhere"))
    try:
        exporter_names(config.exporters)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        problems.append((key, problem))
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
        if not _valid_endpoint(endpoint):
            problems.append((key, f"expected host:port, got {endpoint!r}"))
            continue
        port = split_endpoint(endpoint)[1]
        clash = next((other for other, used in ports if used == port and port != 0), None)
        if clash:
            problems.append((key, f"port {port} is already used by {clash}"))
        ports.append((key, port))
    if problems:
        key, problem = problems[0]
        raise ConfigError(f"{source}: {key}: {problem}")
    try:
        build_engine(ts, PolicyContext(clock=time.monotonic))  # semantic checks of every policy
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _valid_endpoint(endpoint: str) -> bool:
    host, sep, port = endpoint.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) <= 65535


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
