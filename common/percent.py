"""Shares written as percentages: ``90%``, or a plain number read as a percentage (``90``)."""

from __future__ import annotations


class Percent(float):
    """A percentage, 0 to 100, as written (``Percent("90%") == 90.0``)."""

    @classmethod
    def parse(cls, value: object) -> "Percent":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and value.strip().endswith("%"):
            try:
                number = float(value.strip()[:-1])
            except ValueError:
                number = -1.0
        else:
            raise ValueError(f"expected a percentage such as 90%, got {value!r}")
        if not 0 <= number <= 100:
            raise ValueError(f"expected a percentage between 0% and 100%, got {value!r}")
        return cls(number)

    @property
    def share(self) -> float:
        """The percentage as a fraction of 1."""
        return self / 100
