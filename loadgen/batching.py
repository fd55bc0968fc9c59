"""Spans gathered into export requests the way SDK batch processors send them.

Every service sends through one target address (services are spread round-robin over the
targets), so with several targets the spans of one trace reach different collector agents. A
request carries up to ``batch_spans`` spans of many traces, grouped by service resource.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tailsampler.loadgen.model import SERVICES, Trace, resource_bytes, scope_bytes
from tailsampler.loadgen.wire import encode_resource_spans

_ENVELOPES = [(resource_bytes(name), scope_bytes(name)) for name in SERVICES]


@dataclass(slots=True)
class Payload:
    """One export request: its body, target index, span count and the traces whose root it holds."""

    target: int
    data: bytes
    spans: int
    roots: list[bytes] = field(default_factory=list)


class Batcher:
    """Collects framed spans per target and emits a request once one holds ``batch_spans``."""

    def __init__(self, targets: int, batch_spans: int) -> None:
        if batch_spans < 1:
            raise ValueError(f"batch-spans must be at least 1, got {batch_spans}")
        self.targets = targets
        self.batch_spans = batch_spans
        self._spans: list[dict[int, list[bytes]]] = [{} for _ in range(targets)]
        self._counts = [0] * targets
        self._roots: list[list[bytes]] = [[] for _ in range(targets)]

    def add(self, service_index: int, framed: bytes, root_of: bytes | None = None) -> Payload | None:
        """Add one span; ``root_of`` is its trace ID when it is the root. Returns a full request."""
        target = service_index % self.targets
        self._spans[target].setdefault(service_index, []).append(framed)
        if root_of is not None:
            self._roots[target].append(root_of)
        self._counts[target] += 1
        if self._counts[target] >= self.batch_spans:
            return self._emit(target)
        return None

    def add_trace(
        self, trace: Trace, hold: Callable[[], bool] | None = None
    ) -> tuple[list[Payload], list[tuple[int, bytes]]]:
        """Add a trace's spans, except those ``hold`` picks to send late (never the root).

        Returns the requests that filled up and the held-back spans.
        """
        full: list[Payload] = []
        held: list[tuple[int, bytes]] = []
        root_index = len(trace.spans) - 1
        for index, (service, framed) in enumerate(trace.spans):
            if index == root_index:
                payload = self.add(service, framed, trace.trace_id)
            elif hold is not None and hold():
                held.append((service, framed))
                continue
            else:
                payload = self.add(service, framed)
            if payload is not None:
                full.append(payload)
        return full, held

    def flush(self) -> list[Payload]:
        """Every partly filled request, as the SDK's schedule delay would send them."""
        return [self._emit(t) for t in range(self.targets) if self._counts[t]]

    def _emit(self, target: int) -> Payload:
        groups = self._spans[target]
        data = b"".join(
            encode_resource_spans(*_ENVELOPES[service], spans) for service, spans in groups.items()
        )
        payload = Payload(target, data, self._counts[target], self._roots[target])
        self._spans[target] = {}
        self._counts[target] = 0
        self._roots[target] = []
        return payload
