"""The file exporter: OTLP/JSON lines in the OpenTelemetry Collector file exporter's format, one
``ExportTraceServiceRequest`` per kept trace, with size-based rotation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tailsampler.common.otlp_json import to_json

from .base import ExporterSetupError, KeptTrace
from .delivery import Delivered, SendFailed
from .specs import FileSpec
from .worker_thread import WorkerThread


class RotatingFile:
    """Appends lines; before a line would push the file past ``max_bytes`` the file becomes
    ``path.1`` (older backups shift up, the oldest beyond ``max_backups`` is deleted)."""

    def __init__(self, path: Path, max_bytes: int | None, max_backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._max_backups = max_backups
        self._file: BinaryIO | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def write_lines(self, lines: list[bytes]) -> None:
        if self._file is None:  # a rotation that failed half-way left no file open
            self.open()
        assert self._file is not None
        for line in lines:
            if self._max_bytes is not None and self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            self._file.write(line)
            self._size += len(line)
        self._file.flush()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        oldest = self.path.with_name(f"{self.path.name}.{self._max_backups}")
        if self._max_backups == 0:
            self.path.unlink()
        else:
            oldest.unlink(missing_ok=True)
            for n in range(self._max_backups - 1, 0, -1):
                backup = self.path.with_name(f"{self.path.name}.{n}")
                if backup.exists():
                    os.replace(backup, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def json_lines(batch: list[KeptTrace]) -> list[bytes]:
    return [to_json(ExportTraceServiceRequest.FromString(t.data)) + b"\n" for t in batch]


class FileSink:
    def __init__(self, name: str, spec: FileSpec) -> None:
        self._name = name
        rotation = spec.rotation
        self._file = RotatingFile(
            Path(spec.path),
            int(rotation.max_megabytes * 1024 * 1024) if rotation else None,
            rotation.max_backups if rotation else 0,
        )
        self._thread = WorkerThread(f"exporter-{name}")

    async def open(self) -> None:
        try:
            await self._thread.run(self._file.open)
        except OSError as exc:
            raise ExporterSetupError(f"exporter {self._name}: path {str(self._file.path)!r}: {exc.strerror}") from None

    async def send(self, batch: list[KeptTrace]) -> Delivered:
        try:
            await self._thread.run(self._write, batch)
        except OSError as exc:
            raise SendFailed(f"{self._file.path}: {exc.strerror}", retryable=True, reason="io") from None
        return Delivered()

    def _write(self, batch: list[KeptTrace]) -> None:
        self._file.write_lines(json_lines(batch))

    async def close(self) -> None:
        await self._thread.run(self._file.close)
        self._thread.shutdown()
