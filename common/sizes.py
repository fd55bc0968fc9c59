"""Byte sizes written the way Kubernetes and Collector configs write them ("2GiB", "512Mi", "64KB")."""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?", re.IGNORECASE)


class ByteSize(int):
    """Bytes, decoded from a plain number or a number with a unit: ``KiB``/``Ki`` and the other
    binary units are powers of 1024, ``KB``/``K`` and the other decimal ones powers of 1000."""

    @classmethod
    def parse(cls, value: object) -> "ByteSize":
        if isinstance(value, bool):
            raise ValueError("expected a size such as 2GiB, 512MiB or 1000000")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a size cannot be negative")
            return cls(value)
        if isinstance(value, str):
            match = _SIZE.fullmatch(value.strip())
            if match:
                return cls(int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]))
        raise ValueError(f"expected a size such as 2GiB, 512MiB or 1000000, got {value!r}")
