"""A log damaged by a torn write or a flipped byte starts cleanly and says what it lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer.wal import LoggedDecision, Recovered, WalConfig, open_wal
from tailsampler.collector.buffer.wal_format import scan
from tests.otlp_data import fragments, new_trace_id

T0 = 1_800_000_000.0
DROP = LoggedDecision(False, None, None)
SEGMENT = "00000000000000000001.wal"


def reopen(path: Path, registry: CollectorRegistry | None = None) -> Recovered:
    wal, recovered = open_wal(WalConfig(dir=str(path), fsync="never"), registry or CollectorRegistry())
    wal.close()
    return recovered


async def write_log(path: Path, steps: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[int, int, int]]]:
    """A one-segment log of one record per step; its bytes and its records (kind, start, end)."""
    wal, _ = open_wal(WalConfig(dir=str(path), fsync="never"), CollectorRegistry())
    for i, (step, trace_id) in enumerate(steps):
        if step == "append":
            await wal.append({**fragments(trace_id, 3), **fragments(new_trace_id(), 1)}, T0 + i)
        else:
            await wal.decided({trace_id: DROP}, T0 + i)
    wal.close()
    raw = (path / SEGMENT).read_bytes()
    return raw, scan(raw).records


def damaged_copy(path: Path, name: str, raw: bytes) -> Path:
    copy = path / name
    copy.mkdir()
    (copy / SEGMENT).write_bytes(raw)
    return copy


@pytest.mark.parametrize("last", ["append", "decide"])
async def test_a_tail_torn_at_any_byte_is_cut_off_and_the_rest_replays(tmp_path: Path, last: str) -> None:
    a, b, c = new_trace_id(), new_trace_id(), new_trace_id()
    steps = [("append", a), ("append", b), ("decide", a), ("append", c)]
    if last == "decide":
        steps[-1] = ("decide", b)
    raw, records = await write_log(tmp_path / "log", steps)
    intact = reopen(damaged_copy(tmp_path, "intact", raw[: records[-1][1]]))
    last_start = records[-1][1]
    assert last_start < len(raw) and records[-1][2] == len(raw)
    assert b in intact.pending and intact.settled.keys() == {a}
    for cut in range(last_start + 1, len(raw)):
        copy = damaged_copy(tmp_path, f"cut{cut}", raw[:cut])
        registry = CollectorRegistry()
        recovered = reopen(copy, registry)
        assert recovered.pending.keys() == intact.pending.keys() and recovered.settled.keys() == {a}
        assert [t.data for t in recovered.pending.values()] == [t.data for t in intact.pending.values()]
        assert (recovered.torn_bytes, recovered.corrupt_records) == (cut - last_start, 0)
        assert registry.get_sample_value("tailsampler_wal_torn_bytes_total") == cut - last_start
        assert (copy / SEGMENT).stat().st_size == last_start  # cut off, so the next start is clean
        assert reopen(copy).torn_bytes == 0


async def test_a_flipped_byte_anywhere_in_a_middle_record_skips_that_record_only(tmp_path: Path) -> None:
    a, b, c = new_trace_id(), new_trace_id(), new_trace_id()
    raw, records = await write_log(tmp_path / "log", [("append", a), ("append", b), ("append", c)])
    whole = reopen(damaged_copy(tmp_path, "whole", raw))
    _, start, end = records[1]
    for pos in range(start, end):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        registry = CollectorRegistry()
        recovered = reopen(damaged_copy(tmp_path, f"flip{pos}", bytes(flipped)), registry)
        assert a in recovered.pending and c in recovered.pending and b not in recovered.pending, pos
        assert recovered.pending[a].data == whole.pending[a].data and recovered.pending[c].data == whole.pending[c].data
        assert (recovered.corrupt_records, recovered.torn_bytes) == (1, 0), pos
        assert registry.get_sample_value("tailsampler_wal_corrupt_records_total") == 1


async def test_a_flipped_byte_in_the_last_record_and_a_zero_filled_tail_are_cut_off(tmp_path: Path) -> None:
    a, b = new_trace_id(), new_trace_id()
    raw, records = await write_log(tmp_path / "log", [("append", a), ("append", b)])
    flipped = bytearray(raw)
    flipped[-5] ^= 0x80
    recovered = reopen(damaged_copy(tmp_path, "flipped", bytes(flipped)))
    assert a in recovered.pending and b not in recovered.pending
    assert recovered.torn_bytes == records[-1][2] - records[-1][1]

    zeroed = reopen(damaged_copy(tmp_path, "zeroed", raw + bytes(4096)))  # a machine crash's unwritten pages
    assert len(zeroed.pending) == 4 and {a, b} <= zeroed.pending.keys()
    assert (zeroed.torn_bytes, zeroed.corrupt_records) == (4096, 0)
