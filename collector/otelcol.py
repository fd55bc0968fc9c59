"""A whole OpenTelemetry Collector config, run as it is: its traces pipeline, translated into ours.

A file is a Collector config when it has ``service.pipelines``. The traces pipeline it describes
becomes our config: its ``otlp`` receiver, its ``tail_sampling`` processor (the policies run
unchanged), its ``otlp``, ``otlphttp``, ``file`` and ``debug`` exporters with their keys, and
``service.telemetry`` for the admin listener and the log level. tailsampler's own settings
(the buffer, Redis) sit under a ``tailsampler:`` key the Collector does not have.

Whatever cannot run here is named with its key path: components that only shape how the
Collector works (``batch``, ``memory_limiter``, other pipelines) are warnings; anything that
changes which data flows (another receiver, a processor that edits spans, an exporter type we do
not have) is a problem, and the config is refused. Problems found later, while checking the
translated config, are reported at the Collector config's own key paths (``origin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tailsampler.common.errors import Problem

_MIB = 1024 * 1024
_TOP_LEVEL = ("receivers", "processors", "exporters", "extensions", "connectors", "service", "tailsampler")
_OWN = ("buffer", "admin", "service", "pipeline")
_BATCHING = ("batch", "memory_limiter")
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}


def is_collector_config(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("service"), dict) and "pipelines" in data["service"]


def kind(component_id: str) -> str:
    """A component's type: ``otlp`` for ``otlp/backend``."""
    return str(component_id).split("/", 1)[0]


@dataclass
class Translation:
    native: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # what cannot run here: the config is refused
    warnings: list[Problem] = field(default_factory=list)  # what is left out harmlessly
    _origins: dict[str, str] = field(default_factory=dict)  # our key path -> the Collector config's

    def came_from(self, ours: str, theirs: str) -> None:
        self._origins[ours] = theirs

    def origin(self, path: str) -> str | None:
        """Where our key path ``path`` was written in the Collector config; None for what the
        file did not write (a default, or a part the translation could not carry over)."""
        for ours in sorted(self._origins, key=len, reverse=True):
            if path == ours or path.startswith((ours + ".", ours + "[")):
                return self._origins[ours] + path[len(ours):]
        return None

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))


def translate(data: dict[str, Any], processor: str | None = None) -> Translation:
    """Our config for the Collector config ``data``, with what could not be carried over;
    ``processor`` names the tail_sampling processor to run instead of the pipeline's."""
    t = Translation()
    for key in data:
        if key not in _TOP_LEVEL:
            t.problem(str(key), f"not an OpenTelemetry Collector section; expected one of {', '.join(_TOP_LEVEL)}")
    own = _mapping(t, data.get("tailsampler"), "tailsampler")
    pipeline = _pipeline(t, _mapping(t, data["service"].get("pipelines"), "service.pipelines"), own.get("pipeline"))
    if pipeline is not None:
        name, steps = pipeline
        _receivers(t, data, name, steps)
        _processors(t, data, name, steps, processor)
        _exporters(t, data, name, steps)
    _telemetry(t, data)
    for key, value in own.items():
        if key not in _OWN:
            t.problem(f"tailsampler.{key}", f"unknown key; expected one of {', '.join(_OWN)}")
        elif key != "pipeline":
            section = t.native.setdefault(key, {})
            if isinstance(value, dict) and isinstance(section, dict):
                section.update(value)
            else:
                t.native[key] = value
            t.came_from(key, f"tailsampler.{key}")
    return t


def _mapping(t: Translation, value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        t.problem(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _component(t: Translation, data: dict[str, Any], section: str, component_id: str, used_at: str) -> dict[str, Any] | None:
    components = data.get(section) or {}
    if not isinstance(components, dict) or component_id not in components:
        t.problem(used_at, f"{component_id!r} is not defined under {section}")
        return None
    return _mapping(t, components[component_id], f"{section}.{component_id}")


def _pipeline(t: Translation, pipelines: dict[str, Any], wanted: Any) -> tuple[str, dict[str, Any]] | None:
    traces = {str(name): p for name, p in pipelines.items() if kind(str(name)) == "traces"}
    for name in pipelines:
        if kind(str(name)) != "traces":
            t.warn(f"service.pipelines.{name}", "tailsampler runs traces only; this pipeline is not run")
    if wanted is not None:
        if wanted not in traces:
            t.problem("tailsampler.pipeline", f"no traces pipeline named {wanted!r}; found {', '.join(traces) or 'none'}")
            return None
        chosen = str(wanted)
        for name in traces:
            if name != chosen:
                t.warn(f"service.pipelines.{name}", f"not run: tailsampler.pipeline names {chosen}")
    elif len(traces) == 1:
        chosen = next(iter(traces))
    elif not traces:
        t.problem("service.pipelines", "no traces pipeline (traces or traces/<name>): tailsampler runs one")
        return None
    else:
        t.problem("service.pipelines", f"{len(traces)} traces pipelines ({', '.join(traces)}): name the one to run in tailsampler.pipeline")
        return None
    return chosen, _mapping(t, traces[chosen], f"service.pipelines.{chosen}")


def _ids(t: Translation, steps: dict[str, Any], pipeline: str, role: str) -> list[str]:
    ids = steps.get(role) or []
    if not isinstance(ids, list):
        t.problem(f"service.pipelines.{pipeline}.{role}", "expected a list of component IDs")
        return []
    return [str(i) for i in ids]


def _carry(t: Translation, source: dict[str, Any], path: str, target: dict[str, Any], ours: str,
           keys: dict[str, str], ignored: tuple[str, ...] = ()) -> None:
    """Copy ``source``'s ``keys`` (theirs -> ours) into ``target``; an ``ignored`` key is a
    warning, any other key a problem (the Collector refuses unknown keys too)."""
    for key, value in source.items():
        if key in keys:
            target[keys[key]] = value
            t.came_from(f"{ours}.{keys[key]}", f"{path}.{key}")
        elif key in ignored:
            t.warn(f"{path}.{key}", "has no equivalent here and is ignored")
        else:
            t.problem(f"{path}.{key}", "not supported here")


_GRPC_RECEIVER = {"endpoint": "endpoint", "max_recv_msg_size_mib": "max_recv_msg_size_mib", "tls": "tls"}
_GRPC_RECEIVER_IGNORED = ("keepalive", "read_buffer_size", "write_buffer_size", "include_metadata", "max_concurrent_streams", "transport")
_HTTP_RECEIVER = {"endpoint": "endpoint", "tls": "tls"}
_HTTP_RECEIVER_IGNORED = ("cors", "include_metadata", "logs_url_path", "metrics_url_path", "compression_algorithms", "response_headers")


def _receivers(t: Translation, data: dict[str, Any], pipeline: str, steps: dict[str, Any]) -> None:
    at = f"service.pipelines.{pipeline}.receivers"
    receivers = _ids(t, steps, pipeline, "receivers")
    otlp = [r for r in receivers if kind(r) == "otlp"]
    for receiver in receivers:
        if kind(receiver) != "otlp":
            t.problem(at, f"receiver {receiver!r}: only the otlp receiver runs here; send OTLP instead, or run it in a Collector in front")
    if not receivers:
        t.problem(at, "no receiver: spans would have no way in")
    if len(otlp) > 1:
        t.problem(at, f"{len(otlp)} otlp receivers ({', '.join(otlp)}): one runs here, with a gRPC and an HTTP endpoint")
    if len(otlp) != 1:
        return
    receiver = _component(t, data, "receivers", otlp[0], at)
    if receiver is None:
        return
    path = f"receivers.{otlp[0]}"
    protocols = _mapping(t, receiver.get("protocols"), f"{path}.protocols")
    for key in receiver:
        if key != "protocols":
            t.problem(f"{path}.{key}", "not supported here")
    native: dict[str, Any] = {"grpc": None, "http": None}
    authenticators: dict[str, str] = {}
    for protocol, keys, ignored in (("grpc", _GRPC_RECEIVER, _GRPC_RECEIVER_IGNORED), ("http", _HTTP_RECEIVER, _HTTP_RECEIVER_IGNORED)):
        if protocol not in protocols:
            continue
        settings = _mapping(t, protocols[protocol], f"{path}.protocols.{protocol}")  # "grpc:" alone turns it on
        ours: dict[str, Any] = {}
        t.came_from(f"receivers.otlp.{protocol}", f"{path}.protocols.{protocol}")
        rest = {k: v for k, v in settings.items() if k not in ("auth", "max_request_body_size", "traces_url_path")}
        _carry(t, rest, f"{path}.protocols.{protocol}", ours, f"receivers.otlp.{protocol}", keys, ignored)
        if "max_request_body_size" in settings and protocol == "http":
            size = settings["max_request_body_size"]
            ours["max_request_body_size_mib"] = size / _MIB if isinstance(size, (int, float)) else size
            t.came_from("receivers.otlp.http.max_request_body_size_mib", f"{path}.protocols.http.max_request_body_size")
        if settings.get("traces_url_path", "/v1/traces") not in ("/v1/traces", "v1/traces"):
            t.problem(f"{path}.protocols.http.traces_url_path", "tailsampler serves OTLP/HTTP traces at /v1/traces only")
        if "auth" in settings:
            authenticator = _mapping(t, settings["auth"], f"{path}.protocols.{protocol}.auth").get("authenticator")
            authenticators[protocol] = str(authenticator)
        native[protocol] = ours
    for key in protocols:
        if key not in ("grpc", "http"):
            t.problem(f"{path}.protocols.{key}", "expected grpc or http")
    t.native["receivers"] = {"otlp": native}
    if authenticators:
        _receiver_auth(t, data, path, authenticators)


def _receiver_auth(t: Translation, data: dict[str, Any], path: str, authenticators: dict[str, str]) -> None:
    """A ``bearertokenauth`` extension guarding the receiver becomes ``receivers.otlp.auth``."""
    at = f"{path}.protocols.{next(iter(authenticators))}.auth.authenticator"
    names = set(authenticators.values())
    if len(names) > 1 or len(authenticators) < sum(1 for p in ("grpc", "http") if t.native["receivers"]["otlp"][p] is not None):
        t.problem(at, "both protocols must use the same authenticator here")
        return
    name = names.pop()
    if kind(name) != "bearertokenauth":
        t.problem(at, f"authenticator {name!r}: only bearertokenauth runs here")
        return
    extension = _component(t, data, "extensions", name, at)
    if extension is None:
        return
    origin = f"extensions.{name}"
    auth: dict[str, Any] = {}
    for key, value in extension.items():
        if key in ("token", "tokens"):
            auth.setdefault("bearer_tokens", []).extend(value if isinstance(value, list) else [value])
        elif key == "filename":
            auth["bearer_tokens_file"] = value
        elif key == "scheme" and value == "Bearer":
            pass
        elif key == "header" and str(value).lower() == "authorization":
            pass
        else:
            t.problem(f"{origin}.{key}", "not supported here (tokens are read from the Authorization: Bearer header)")
    t.native["receivers"]["otlp"]["auth"] = auth
    t.came_from("receivers.otlp.auth.bearer_tokens", f"{origin}.tokens" if "tokens" in extension else f"{origin}.token")
    t.came_from("receivers.otlp.auth.bearer_tokens_file", f"{origin}.filename")


def _processors(t: Translation, data: dict[str, Any], pipeline: str, steps: dict[str, Any], chosen: str | None) -> None:
    at = f"service.pipelines.{pipeline}.processors"
    sampling = [] if chosen is None else [chosen]
    for processor in _ids(t, steps, pipeline, "processors"):
        if kind(processor) == "tail_sampling":
            if chosen is None:
                sampling.append(processor)
        elif kind(processor) in _BATCHING:
            t.warn(f"processors.{processor}", "tailsampler batches its exports and bounds its buffer itself "
                   "(tail_sampling.num_traces, buffer.max_bytes); not run")
        else:
            t.problem(at, f"processor {processor!r} changes the data and cannot run here; "
                      "run it in a Collector before or after tailsampler")
    if len(sampling) != 1:
        t.problem(at, "no tail_sampling processor" if not sampling else f"{len(sampling)} tail_sampling processors: one runs here")
        return
    block = _component(t, data, "processors", sampling[0], at)
    if block is not None:
        t.native["tail_sampling"] = block
        t.came_from("tail_sampling", f"processors.{sampling[0]}")


_NETWORK = {"endpoint": "endpoint", "headers": "headers", "compression": "compression", "timeout": "timeout"}
_NETWORK_IGNORED = ("balancer_name", "keepalive", "write_buffer_size", "read_buffer_size", "wait_for_ready",
                    "max_idle_conns", "max_idle_conns_per_host", "max_conns_per_host", "idle_conn_timeout",
                    "http2_read_idle_timeout", "http2_ping_timeout", "disable_keep_alives", "proxy_url")
_QUEUE = {"queue_size": "queue_size", "num_consumers": "num_consumers"}
_RETRY = {"enabled": "enabled", "initial_interval": "initial_interval", "max_interval": "max_interval", "max_elapsed_time": "max_elapsed_time"}
_EXPORTERS = {"otlp": "otlp", "otlp_grpc": "otlp", "otlphttp": "otlphttp", "otlp_http": "otlphttp", "file": "file", "debug": "debug", "logging": "debug"}
_COMPRESSION = {"gzip": "gzip", "none": "none", "": "none"}


def _exporters(t: Translation, data: dict[str, Any], pipeline: str, steps: dict[str, Any]) -> None:
    at = f"service.pipelines.{pipeline}.exporters"
    exporters: list[dict[str, Any]] = []
    for exporter in _ids(t, steps, pipeline, "exporters"):
        ours_type = _EXPORTERS.get(kind(exporter))
        if ours_type is None:
            t.problem(at, f"exporter {exporter!r}: its type is not one that runs here ({', '.join(sorted(set(_EXPORTERS.values())))})")
            continue
        settings = _component(t, data, "exporters", exporter, at)
        if settings is None:
            continue
        ours = f"exporters[{len(exporters)}]"
        path = f"exporters.{exporter}"
        entry: dict[str, Any] = {"type": ours_type, "name": exporter}
        t.came_from(ours, path)
        _exporter(t, settings, path, entry, ours)
        exporters.append(entry)
    if not _ids(t, steps, pipeline, "exporters"):
        t.problem(at, "no exporter: kept traces would go nowhere")
    t.native["exporters"] = exporters


def _exporter(t: Translation, settings: dict[str, Any], path: str, entry: dict[str, Any], ours: str) -> None:
    network = entry["type"] in ("otlp", "otlphttp")
    keys: dict[str, str] = dict(_NETWORK) if network else {}
    ignored: tuple[str, ...] = _NETWORK_IGNORED if network else ()
    if entry["type"] == "otlphttp":
        keys["traces_endpoint"] = "traces_endpoint"
    elif entry["type"] == "file":
        keys, ignored = {"path": "path"}, ("flush_interval", "append")
    elif entry["type"] == "debug":
        keys, ignored = {"verbosity": "verbosity", "sampling_initial": "sampling_initial", "sampling_thereafter": "sampling_thereafter"}, ("loglevel", "use_internal_logger")
    special = {"sending_queue", "retry_on_failure", "compression"} | (
        {"tls", "auth", "encoding"} if network else {"rotation", "format"} if entry["type"] == "file" else set()
    )
    _carry(t, {k: v for k, v in settings.items() if k not in special}, path, entry, ours, keys, ignored)
    if "compression" in settings:
        value = str(settings["compression"] or "")
        if network and value in _COMPRESSION:
            entry["compression"] = _COMPRESSION[value]
            t.came_from(f"{ours}.compression", f"{path}.compression")
        elif network or value:
            t.problem(f"{path}.compression", f"compression {value!r} is not supported here; use gzip or none")
    if "tls" in settings:  # the Collector's configtls client keys, as they are
        entry["tls"] = settings["tls"]
        t.came_from(f"{ours}.tls", f"{path}.tls")
    if "sending_queue" in settings:
        queue = dict(_mapping(t, settings["sending_queue"], f"{path}.sending_queue"))
        if queue.pop("enabled", True) is False:
            t.warn(f"{path}.sending_queue.enabled", "every exporter here has a bounded queue; it stays on")
        _carry(t, queue, f"{path}.sending_queue", entry, ours, _QUEUE, ("blocking", "sizer", "batch", "wait_for_result"))
    if "retry_on_failure" in settings:
        retry: dict[str, Any] = {}
        _carry(t, _mapping(t, settings["retry_on_failure"], f"{path}.retry_on_failure"), f"{path}.retry_on_failure",
               retry, f"{ours}.retry_on_failure", _RETRY, ("multiplier", "randomization_factor"))
        entry["retry_on_failure"] = retry
    if "auth" in settings:
        t.problem(f"{path}.auth", "exporter authenticators do not run here; send the token in headers (authorization: Bearer ${env:TOKEN})")
    if settings.get("encoding", "proto") != "proto":
        t.warn(f"{path}.encoding", "OTLP/HTTP is sent as protobuf here")
    if entry["type"] == "file":
        if settings.get("format", "json") != "json":
            t.problem(f"{path}.format", "the file exporter writes OTLP/JSON lines here")
        if "rotation" in settings:
            rotation: dict[str, Any] = {}
            _carry(t, _mapping(t, settings["rotation"], f"{path}.rotation"), f"{path}.rotation", rotation,
                   f"{ours}.rotation", {"max_megabytes": "max_megabytes", "max_backups": "max_backups"}, ("max_days", "localtime"))
            entry["rotation"] = rotation


def _telemetry(t: Translation, data: dict[str, Any]) -> None:
    telemetry = _mapping(t, data["service"].get("telemetry"), "service.telemetry")
    metrics = _mapping(t, telemetry.get("metrics"), "service.telemetry.metrics")
    address, origin = metrics.get("address"), "service.telemetry.metrics.address"
    for index, reader in enumerate(metrics.get("readers") or []):
        prometheus = ((reader or {}).get("pull") or {}).get("exporter", {}).get("prometheus") if isinstance(reader, dict) else None
        if isinstance(prometheus, dict) and address is None:
            address = f"{prometheus.get('host', 'localhost')}:{prometheus.get('port', 8888)}"
            origin = f"service.telemetry.metrics.readers[{index}].pull.exporter.prometheus"
    for extension in data["service"].get("extensions") or []:
        settings = (data.get("extensions") or {}).get(extension)
        if kind(str(extension)) == "health_check":
            t.warn(f"extensions.{extension}", "served by the admin listener as /health and /health/ready")
            if address is None and isinstance(settings, dict) and settings.get("endpoint"):
                address, origin = settings["endpoint"], f"extensions.{extension}.endpoint"
        elif kind(str(extension)) != "bearertokenauth":
            t.warn(f"extensions.{extension}", "not run here")
    if address is not None:
        t.native["admin"] = {"endpoint": address}
        t.came_from("admin.endpoint", origin)
    logs = _mapping(t, telemetry.get("logs"), "service.telemetry.logs")
    if "level" in logs:
        level = str(logs["level"]).lower()
        if level in _LOG_LEVELS:
            t.native["service"] = {"log_level": _LOG_LEVELS[level]}
            t.came_from("service.log_level", "service.telemetry.logs.level")
        else:
            t.problem("service.telemetry.logs.level", f"expected one of {', '.join(_LOG_LEVELS)}, got {logs['level']!r}")
