"""The one log record an agent writes when it has started: what it runs, as the config says.

Version, the wire core that runs (``c`` or ``python``), config file and hash, each listener with its TLS and authentication state, the buffer, its
bounds and its write-ahead log, the policies in config order, the exporters and where they send, and overload relief. Nothing secret: URLs lose their user and password, headers are not shown. The
record carries the same facts as structured fields, for ``service.log_format: json``.

TLS and authentication are read from the ``tls`` and ``auth`` blocks of the listener sections
where the config has them; a listener without one is plaintext and open.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tailsampler.collector import wire
from tailsampler.collector.config import Config
from tailsampler.storage import FileSpec, OtlpHttpSpec, OtlpSpec, SqliteSpec, exporter_names


def version() -> str:
    try:
        return metadata.version("tailsampler")
    except metadata.PackageNotFoundError:
        return "unknown"


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` left out."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _tls(section: Any) -> str:
    tls = getattr(section, "tls", None)
    if tls is None:
        return "plaintext"
    return "mutual TLS" if getattr(tls, "client_ca_file", None) else "TLS"


def _auth(section: Any) -> str:
    auth = getattr(section, "auth", None)
    if auth is None or not (getattr(auth, "bearer_tokens", None) or getattr(auth, "bearer_tokens_file", None)):
        return "no auth"
    return "bearer token"


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} B"


def _fsync(wal: Any) -> str:
    return f"every {wal.fsync_interval:g}s" if wal.fsync == "interval" else wal.fsync


def _target(spec: Any) -> str:
    if isinstance(spec, OtlpSpec):
        return f"{spec.endpoint} ({'plaintext' if spec.insecure else 'TLS'})"
    if isinstance(spec, OtlpHttpSpec):
        return without_credentials(spec.url)
    if isinstance(spec, (FileSpec, SqliteSpec)):
        return spec.path
    return "?"


def startup_summary(config: Config, source: str, config_hash: str, ports: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """The message and its structured fields; ``ports`` holds the ports actually bound
    (``otlp/grpc``, ``otlp/http``, ``admin``), which differ from the config's when it says 0."""
    otlp = config.receivers.otlp
    listeners: dict[str, dict[str, str]] = {}
    for name, section, endpoint, auth_section in (
        ("otlp/grpc", otlp.grpc, otlp.grpc and otlp.grpc.endpoint, otlp),
        ("otlp/http", otlp.http, otlp.http and otlp.http.endpoint, otlp),
        ("admin", config.admin, config.admin.endpoint, config.admin),
    ):
        if section is None or endpoint is None:
            continue
        listeners[name] = {
            "address": str(endpoint.with_port(ports.get(name, endpoint.port))),
            "tls": _tls(section),
            "auth": _auth(auth_section),
        }
    ts, buf = config.tail_sampling, config.buffer
    buffer: dict[str, Any] = {
        "type": buf.type,
        "num_traces": ts.num_traces,
        "max_bytes": buf.max_bytes,
        "decision_wait": float(ts.decision_wait),
        "decision_wait_after_root_received": float(ts.decision_wait_after_root_received),
        "overflow": "backpressure" if ts.block_on_overflow else buf.overflow,
    }
    if buf.type == "redis":
        buffer.update(url=without_credentials(buf.url), cluster=buf.cluster, shards=buf.shards, key_prefix=buf.key_prefix)
    if buf.wal is not None:
        buffer["wal"] = {"dir": buf.wal.dir, "fsync": buf.wal.fsync, "max_bytes": int(buf.wal.max_bytes)}
        if buf.wal.fsync == "interval":
            buffer["wal"]["fsync_interval"] = float(buf.wal.fsync_interval)
    policies = [{"name": p.name, "type": str(type(p).__struct_config__.tag)} for p in ts.policies]
    exporters = [
        {"name": name, "type": str(type(spec).__struct_config__.tag), "target": _target(spec)}
        for name, spec in zip(exporter_names(config.exporters), config.exporters)
    ]
    overload = None
    if ts.overload is not None:
        overload = {
            "activate_at": float(ts.overload.activate_at),
            "deactivate_at": float(ts.overload.deactivate_at),
            "sampling_percentage": ts.overload.sampling_percentage,
        }
    fields = {
        "version": version(), "core": wire.CORE, "config_file": source, "config_hash": config_hash, "listeners": listeners,
        "buffer": buffer, "policies": policies, "exporters": exporters, "overload_relief": overload,
    }
    where = f" {buffer['url']}" if buf.type == "redis" else ""
    text = "; ".join([
        f"tailsampler {fields['version']} ({wire.CORE} wire core) started from {source} (config {config_hash})",
        ", ".join(f"{name} {l['address']} ({l['tls']}, {l['auth']})" for name, l in listeners.items()),
        f"buffer {buf.type}{where}: num_traces {ts.num_traces}, max_bytes {_size(buf.max_bytes)}, "
        f"decision_wait {ts.decision_wait:g}s, after root "
        + (f"{ts.decision_wait_after_root_received:g}s" if ts.decision_wait_after_root_received else "off")
        + f", overflow {buffer['overflow']}"
        + (f", write-ahead log {buf.wal.dir} (fsync {_fsync(buf.wal)}, max_bytes {_size(buf.wal.max_bytes)})" if buf.wal else ""),
        "policies " + ", ".join(f"{p['name']} ({p['type']})" for p in policies),
        "exporters " + ", ".join(f"{e['name']} -> {e['target']}" for e in exporters),
        "overload relief " + (
            f"at {overload['activate_at']:g}% (off at {overload['deactivate_at']:g}%, keeps {overload['sampling_percentage']:g}%)"
            if overload else "off"
        ),
    ])
    return text, fields
