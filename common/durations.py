"""Durations written the way OpenTelemetry Collector configs write them ("10s", "100ms", "1m30s", "7d")."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


class Duration(float):
    """Seconds, decoded from a Go-style duration string or a plain number of seconds."""

    @classmethod
    def parse(cls, value: object) -> "Duration":
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 10s, 500ms or 1m")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        if isinstance(value, str):
            text = value.strip()
            if text == "0":
                return cls(0.0)
            pos, total = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                total += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos == len(text) and pos > 0:
                return cls(total)
        raise ValueError(f"expected a duration such as 10s, 500ms or 1m, got {value!r}")
