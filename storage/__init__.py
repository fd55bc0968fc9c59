"""Where kept traces go: OTLP/gRPC, OTLP/HTTP, OTLP/JSON files and the embedded SQLite store."""

from .base import Exporter, ExporterSetupError, KeptTrace
from .build import build_exporters, exporter_names
from .specs import DebugSpec, ExporterSpec, FileSpec, OtlpHttpSpec, OtlpSpec, SqliteSpec
from .sqlite_store import TraceStoreError, get_trace, list_traces, recent_traces

__all__ = [
    "DebugSpec",
    "Exporter",
    "ExporterSetupError",
    "ExporterSpec",
    "FileSpec",
    "KeptTrace",
    "OtlpHttpSpec",
    "OtlpSpec",
    "SqliteSpec",
    "TraceStoreError",
    "build_exporters",
    "exporter_names",
    "get_trace",
    "list_traces",
    "recent_traces",
]
