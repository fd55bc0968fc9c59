"""The wire core: one walk over an OTLP export request that checks it, splits it into per-trace
fragments and gathers each trace's facts.

Two cores share this interface: the C extension ``_wire`` and its pure-Python twin ``wire_py``,
the reference, which runs when the extension was not built or ``TAILSAMPLER_NO_EXTENSIONS`` is
set (to anything but empty or ``0``). ``CORE`` says which one runs (``"c"`` or ``"python"``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from tailsampler.collector import wire_py
from tailsampler.collector.wire_errors import WireError
from tailsampler.common.trace_facts import FACTS_SIZE

NO_EXTENSIONS = os.environ.get("TAILSAMPLER_NO_EXTENSIONS", "") not in ("", "0")
FNV_OFFSET = 0xCBF29CE484222325
DEFAULT_HASH_SALT = "default-hash-seed"

if NO_EXTENSIONS:
    _core = wire_py
else:
    try:
        from tailsampler.collector import _wire as _core  # type: ignore[no-redef]
    except ImportError as missing:  # installed where it could not be compiled: the build said so too
        logging.getLogger(__name__).warning("the C wire core is not built (%s): running the pure-Python core", missing)
        _core = wire_py

CORE: str = _core.CORE
DIGEST_SIZE = wire_py.DIGEST_SIZE  # of a resource's digest in a chain (``chain``, ``unchain``)
Fragment = _core.Fragment
merge_facts = _core.merge_facts
fnv1a_64 = _core.fnv1a_64
chain = _core.chain
shard_appends = _core.shard_appends
shard_of = wire_py.shard_of
unchain = _core.unchain
REFUSED_MESSAGE = "{} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"


@dataclass(slots=True)
class WireSplit:
    """One request, split: ``fragments`` by trace ID in the order of their first span,
    ``span_count`` spans accepted, ``rejected_spans`` refused for invalid IDs (OTLP's
    ``partial_success``, with ``error_message``), and ``root_resources``: the accepted root spans
    by the shared head of the resource they were sent under (``b""`` for a resource without
    fields), so that traces are counted by root service once per resource, not once per trace."""

    fragments: dict[bytes, Fragment]
    span_count: int
    rejected_spans: int
    root_resources: dict[bytes, int]

    @property
    def error_message(self) -> str:
        return REFUSED_MESSAGE.format(self.rejected_spans) if self.rejected_spans else ""


def split(body: bytes) -> WireSplit:
    """Split an ``ExportTraceServiceRequest`` body; one the walk refuses raises ``WireError``."""
    return WireSplit(*_core.split(body))


def facts_of(data: bytes) -> bytes:
    """The facts record of a trace's bytes as a buffer hands them out or a store keeps them (a
    ``TracesData`` body): its split's records merged. Raises ``WireError`` for bytes the walk
    refuses and ``ValueError`` for bytes without an accepted span."""
    return merge_facts(b"".join([fragment.facts for fragment in split(data).fragments.values()]))


DEFAULT_SALT_STATE = fnv1a_64(DEFAULT_HASH_SALT.encode())

__all__ = [
    "CORE", "DEFAULT_HASH_SALT", "DIGEST_SIZE", "DEFAULT_SALT_STATE", "FACTS_SIZE", "FNV_OFFSET", "Fragment", "WireError",
    "WireSplit", "chain", "facts_of", "fnv1a_64", "merge_facts", "shard_appends", "shard_of", "split", "unchain",
]
