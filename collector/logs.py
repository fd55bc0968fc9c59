"""The agent's log: plain lines for people, or one JSON object a line for log pipelines
(``service.log_format: json``).

A JSON line holds ``time`` (RFC 3339, UTC), ``level``, ``logger`` and ``message``, the traceback as
``exception`` when there is one, and any structured fields a record carries (the startup summary's
endpoints, policies and exporters) under their own keys, so a pipeline need not parse messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from tailsampler.collector.config import ServiceConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = "fields"  # ``log.info(..., extra={FIELDS: {...}})``


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update((key, value) for key, value in fields.items() if key not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: ServiceConfig) -> None:
    """Point the root logger at stderr in the configured format and level; called again by a
    reload, it changes both in place."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_tailsampler", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._tailsampler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if service.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.setLevel(getattr(logging, service.log_level.upper()))
