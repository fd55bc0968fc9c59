"""The ``exporters:`` entries of the config: one struct per exporter type, tagged by ``type``.

Every key has a default, so ``{type: sqlite}`` alone is a working exporter. Checks that need
more than a type (an endpoint's shape, a key file without its certificate) run while decoding,
so a config error names the entry and key that is wrong.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import msgspec

from tailsampler.common.durations import Duration
from tailsampler.common.endpoints import Endpoint


class RetryConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Backoff for a failed send (the OpenTelemetry Collector's ``retry_on_failure`` keys), plus
    a budget: retries may be at most ``budget_ratio`` of the sends in the last ``budget_window``
    (never fewer than ``budget_min_retries``), so a struggling backend is not hit N times harder."""

    enabled: bool = True
    initial_interval: Duration = Duration(1.0)
    max_interval: Duration = Duration(30.0)
    max_elapsed_time: Duration = Duration(300.0)
    budget_ratio: float = 0.2
    budget_min_retries: int = 10
    budget_window: Duration = Duration(10.0)

    def __post_init__(self) -> None:
        if self.initial_interval <= 0:
            raise ValueError("initial_interval must be greater than 0")
        if self.max_interval < self.initial_interval:
            raise ValueError("max_interval must be at least initial_interval")
        if self.budget_ratio < 0 or self.budget_min_retries < 0:
            raise ValueError("budget_ratio and budget_min_retries cannot be negative")
        if self.budget_window <= 0:
            raise ValueError("budget_window must be greater than 0")


class CircuitConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Opens after ``failure_threshold`` consecutive failed sends; after ``cooldown`` one probe
    is let through and its outcome closes or reopens the circuit."""

    failure_threshold: int = 5
    cooldown: Duration = Duration(10.0)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cooldown <= 0:
            raise ValueError("cooldown must be greater than 0")


class _Common(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Delivery settings shared by every exporter type."""

    name: str = ""
    queue_size: int = 1000
    batch_max_traces: int = 100
    batch_max_bytes: int = 4_000_000
    retry_on_failure: RetryConfig = msgspec.field(default_factory=RetryConfig)
    circuit_breaker: CircuitConfig = msgspec.field(default_factory=CircuitConfig)

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if self.batch_max_traces < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_traces and batch_max_bytes must be at least 1")


class _Network(_Common, kw_only=True):
    """Keys shared by the two OTLP exporters."""

    headers: dict[str, str] = msgspec.field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    timeout: Duration = Duration(10.0)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    num_consumers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (client TLS certificate)")
        if self.timeout <= 0:
            raise ValueError("timeout must be greater than 0")
        if self.num_consumers < 1:
            raise ValueError("num_consumers must be at least 1")


class OtlpSpec(_Network, tag="otlp", kw_only=True):
    """OTLP/gRPC to ``endpoint`` (host:port); ``insecure: true`` for plaintext."""

    endpoint: str = "localhost:4317"
    insecure: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            host = Endpoint.parse(self.endpoint).host
        except ValueError as exc:
            raise ValueError(f"endpoint: {exc}") from None
        if not host:
            raise ValueError(f"endpoint: expected host:port, got {self.endpoint!r}")
        if self.insecure and (self.ca_file or self.cert_file):
            raise ValueError("insecure: true cannot be combined with ca_file / cert_file")


class OtlpHttpSpec(_Network, tag="otlphttp", kw_only=True):
    """OTLP/HTTP protobuf: POST to ``traces_endpoint``, or ``endpoint`` + ``/v1/traces``."""

    endpoint: str = "http://localhost:4318"
    traces_endpoint: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, url in (("endpoint", self.endpoint), ("traces_endpoint", self.traces_endpoint)):
            if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
                raise ValueError(f"{key}: expected an http:// or https:// URL, got {url!r}")

    @property
    def url(self) -> str:
        return self.traces_endpoint or self.endpoint.rstrip("/") + "/v1/traces"


class RotationConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``max_backups`` rotated files are kept as ``path.1`` (newest) .. ``path.N``."""

    max_megabytes: float = 100.0
    max_backups: int = 10

    def __post_init__(self) -> None:
        if self.max_megabytes <= 0:
            raise ValueError("max_megabytes must be greater than 0")
        if self.max_backups < 0:
            raise ValueError("max_backups cannot be negative")


class FileSpec(_Common, tag="file", kw_only=True):
    """OTLP/JSON lines, one ``ExportTraceServiceRequest`` (one trace) per line."""

    path: str = "./tailsampler-traces.jsonl"
    rotation: RotationConfig | None = None


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Traces stored longer ago than ``max_age`` are deleted, then the oldest until the stored
    spans fit ``max_megabytes``; checked every ``interval``. 0 turns a limit off."""

    max_age: Duration = Duration(7 * 86400.0)
    max_megabytes: float = 1024.0
    interval: Duration = Duration(60.0)

    def __post_init__(self) -> None:
        if self.max_megabytes < 0:
            raise ValueError("max_megabytes cannot be negative")
        if self.interval <= 0:
            raise ValueError("interval must be greater than 0")


class SqliteSpec(_Common, tag="sqlite", kw_only=True):
    """The embedded, queryable store (``tailsampler traces``, admin API)."""

    path: str = "./tailsampler.db"
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)


class DebugSpec(_Common, tag="debug", kw_only=True):
    """Kept traces written to the log (the OpenTelemetry Collector's ``debug`` exporter)."""

    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = 2
    sampling_thereafter: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling_initial < 0 or self.sampling_thereafter < 1:
            raise ValueError("sampling_initial cannot be negative and sampling_thereafter must be at least 1")


ExporterSpec = OtlpSpec | OtlpHttpSpec | FileSpec | SqliteSpec | DebugSpec
