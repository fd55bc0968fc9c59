"""Reading the TLS files named in an exporter's config, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

from .base import ExporterSetupError


def read_pem(exporter: str, key: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ExporterSetupError(f"exporter {exporter}: {key} {path!r}: {exc.strerror}") from None
