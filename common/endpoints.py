"""``host:port`` endpoints as the OpenTelemetry Collector writes them, parsed in one place.

An IPv6 host is written in brackets (``[::1]:4317``); an empty host (``:4317``) means every
interface, as Go's ``net.Listen`` reads it.
"""

from __future__ import annotations


class Endpoint:
    """A parsed ``host:port``. A plain class rather than a tuple or dataclass, so that config
    decoding hands its text to ``parse`` instead of expecting an array or a mapping."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host  # without brackets; "" for every interface
        self.port = port

    @classmethod
    def parse(cls, text: object) -> "Endpoint":
        """``host:port``; raises ValueError saying what was expected."""
        if isinstance(text, str):
            host, sep, port = text.rpartition(":")
            if sep and port.isdigit() and int(port) <= 65535 and (":" not in host or host.startswith("[")):
                return cls(host.removeprefix("[").removesuffix("]"), int(port))
        raise ValueError(f"expected host:port, got {text!r}")

    @property
    def listen_host(self) -> str:
        """The host to bind: every interface when none is given."""
        return self.host or "0.0.0.0"

    @property
    def listen_address(self) -> str:
        """``host:port`` to bind, with the host made explicit."""
        return str(Endpoint(self.listen_host, self.port))

    def with_port(self, port: int) -> "Endpoint":
        return Endpoint(self.host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"Endpoint({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.host, self.port))
