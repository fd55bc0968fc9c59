"""``buffer.wal``: the memory buffer's write-ahead log settings.

Apart from the log itself (``collector/buffer/wal.py``) so that the config loader can read them
without importing the buffers, which import the config.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tailsampler.common.durations import Duration
from tailsampler.common.sizes import ByteSize

_MIN_BYTES = 1024 * 1024


class WalConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``buffer.wal``: where the log lives, how often it is flushed, how large it may grow."""

    dir: str
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval: Duration = Duration(1.0)
    max_bytes: ByteSize = ByteSize(2 * 1024**3)

    def problems(self) -> list[tuple[str, str]]:
        """(key under ``buffer.wal``, what is wrong) for each setting that cannot be used."""
        found = []
        if not self.dir.strip():
            found.append(("dir", "must name a directory"))
        if self.fsync == "interval" and self.fsync_interval <= 0:
            found.append(("fsync_interval", "must be greater than 0 with fsync: interval"))
        if self.max_bytes < _MIN_BYTES:
            found.append(("max_bytes", f"must be at least 1MiB, got {int(self.max_bytes)} bytes"))
        return found

    @property
    def segment_bytes(self) -> int:
        """A sixteenth of ``max_bytes``, between 64 KiB and 64 MiB: small enough that settled
        data is freed soon, large enough that files are few."""
        return min(64 * 1024 * 1024, max(64 * 1024, self.max_bytes // 16))
