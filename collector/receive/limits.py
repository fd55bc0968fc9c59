"""How much one OTLP listener lets in at once: requests and the bytes they hold.

A request is admitted before its body is read (past either bound it gets a retryable
UNAVAILABLE / 503 and costs nothing more); once read, its size is held against the byte budget
until the ingest is done with it. Without this, requests queue inside the server without limit
and memory under a spike is bounded by nothing but the clients' patience.
"""

from __future__ import annotations

RETRY_AFTER = 1.0  # seconds: what a client refused for being over the budget is told to wait


class InFlight:
    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0

    def admit(self, declared: int = 0) -> "Ticket | None":
        """A new request announcing ``declared`` bytes (0 when unknown), or None when the
        listener is at either bound."""
        if self.requests >= self._max_requests or not self._fits(declared):
            return None
        self.requests += 1
        self.bytes += declared
        return Ticket(self, declared)

    def _fits(self, extra: int, own: int = 0) -> bool:
        """Whether ``extra`` more bytes fit beside the others' (a request holding ``own``). One
        request always fits, or a body larger than the budget would be refused forever."""
        return self.bytes == own or self.bytes + extra <= self._max_bytes


class Ticket:
    """One admitted request's share of its listener's budget."""

    __slots__ = ("_budget", "_size", "_open")

    def __init__(self, budget: InFlight, size: int) -> None:
        self._budget = budget
        self._size = size
        self._open = True

    def hold(self, size: int) -> bool:
        """Hold ``size`` bytes in all for this request; False (holding what it held) when that
        does not fit the budget."""
        budget, extra = self._budget, size - self._size
        if extra > 0 and not budget._fits(extra, self._size):
            return False
        budget.bytes += extra
        self._size = size
        return True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._budget.requests -= 1
            self._budget.bytes -= self._size
