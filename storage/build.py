"""Turn the ``exporters:`` config entries into running exporters."""

from __future__ import annotations

from collections import Counter
from typing import Callable

from prometheus_client import CollectorRegistry

from .base import Exporter
from .debug_log import DebugSink
from .delivery import QueuedExporter, Sink
from .jsonl_file import FileSink
from .otlp_grpc import OtlpGrpcSink
from .otlp_http import OtlpHttpSink
from .specs import DebugSpec, ExporterSpec, FileSpec, OtlpHttpSpec, OtlpSpec, SqliteSpec
from .sqlite_store import SqliteSink

_SINKS: dict[type, Callable[[str, ExporterSpec], Sink]] = {
    OtlpSpec: OtlpGrpcSink,  # type: ignore[dict-item]
    OtlpHttpSpec: OtlpHttpSink,  # type: ignore[dict-item]
    FileSpec: FileSink,  # type: ignore[dict-item]
    SqliteSpec: SqliteSink,  # type: ignore[dict-item]
    DebugSpec: DebugSink,  # type: ignore[dict-item]
}


def exporter_names(specs: list[ExporterSpec]) -> list[str]:
    """``name`` when given, else the type (``otlp/2`` for the second unnamed ``otlp``).

    Raises ValueError naming the entry when two exporters end up with the same name, because
    their metrics and health entries would be indistinguishable."""
    types = Counter(spec.__struct_config__.tag for spec in specs if not spec.name)
    seen: dict[str, int] = {}
    names = []
    for index, spec in enumerate(specs):
        tag = spec.__struct_config__.tag
        name = spec.name or (f"{tag}/{index}" if types[tag] > 1 else str(tag))
        if name in seen:
            raise ValueError(f"exporters[{index}].name: {name!r} is already used by exporters[{seen[name]}]")
        seen[name] = index
        names.append(name)
    return names


def build_exporters(
    specs: list[ExporterSpec], registry: CollectorRegistry, names: list[str] | None = None
) -> list[Exporter]:
    """Exporters ready to ``start()``; their metrics are registered on ``registry``. ``names``
    (default: ``exporter_names(specs)``) is for some entries of a longer list, whose names
    depend on the whole list."""
    exporters: list[Exporter] = []
    for name, spec in zip(names or exporter_names(specs), specs):
        local = isinstance(spec, (FileSpec, SqliteSpec, DebugSpec))  # one writer keeps lines and rows in order
        exporters.append(
            QueuedExporter(
                name,
                _SINKS[type(spec)](name, spec),
                queue_size=spec.queue_size,
                batch_max_traces=spec.batch_max_traces,
                batch_max_bytes=spec.batch_max_bytes,
                retry=spec.retry_on_failure,
                circuit=spec.circuit_breaker,
                consumers=1 if local else spec.num_consumers,  # type: ignore[union-attr]
                registry=registry,
            )
        )
    return exporters
