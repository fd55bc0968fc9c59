"""The memory buffer's write-ahead log on real files: replay, settling, segments, bounds, errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer.wal import (
    LoggedDecision,
    Recovered,
    WalConfig,
    WalError,
    WalFull,
    WriteAheadLog,
    open_wal,
)
from tailsampler.common.durations import Duration
from tailsampler.common.sizes import ByteSize
from tailsampler.collector.wire import Fragment
from tailsampler.policies import Verdict
from tests.otlp_data import fragments, new_trace_id

T0 = 1_800_000_000.0
MiB = 1024 * 1024
DROP = LoggedDecision(False, None, None)
KEEP = LoggedDecision(True, "errors", None)


def open_log(path: Path, registry: CollectorRegistry | None = None, **settings: Any) -> tuple[WriteAheadLog, Recovered]:
    return open_wal(WalConfig(dir=str(path), **settings), registry or CollectorRegistry())


def reopen(path: Path, **settings: Any) -> Recovered:
    wal, recovered = open_log(path, **settings)
    wal.close()
    return recovered


def request(*traces: tuple[bytes, int], root: bool = False) -> dict[bytes, Fragment]:
    out: dict[bytes, Fragment] = {}
    for trace_id, spans in traces:
        out.update(fragments(trace_id, spans, root=root))
    return out


def segment_files(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if name.endswith(".wal"))


def spans_in(data: bytes) -> int:
    return sum(len(ss.spans) for rs in TracesData.FromString(data).resource_spans for ss in rs.scope_spans)


def _hook(type_: type, value: object) -> object:
    return {Duration: Duration.parse, ByteSize: ByteSize.parse}[type_](value)


def test_config_takes_the_keys_users_write() -> None:
    data = {"dir": "/var/lib/tailsampler/wal", "fsync": "always", "fsync_interval": "250ms", "max_bytes": "512MiB"}
    config = msgspec.convert(data, WalConfig, dec_hook=_hook, strict=False)
    assert (config.fsync, config.fsync_interval, config.max_bytes) == ("always", 0.25, 512 * MiB)
    defaults = msgspec.convert({"dir": "wal"}, WalConfig, dec_hook=_hook, strict=False)
    assert (defaults.fsync, defaults.fsync_interval, defaults.max_bytes) == ("interval", 1.0, 2 * 1024 * MiB)
    assert defaults.segment_bytes == 64 * MiB and WalConfig(dir="w", max_bytes=ByteSize(4 * MiB)).segment_bytes == 256 * 1024
    assert defaults.problems() == []
    assert WalConfig(dir=" ", fsync_interval=Duration(0), max_bytes=ByteSize(1000)).problems() == [
        ("dir", "must name a directory"),
        ("fsync_interval", "must be greater than 0 with fsync: interval"),
        ("max_bytes", "must be at least 1MiB, got 1000 bytes"),
    ]
    with pytest.raises(msgspec.ValidationError, match="fsync"):
        msgspec.convert({"dir": "w", "fsync": "sometimes"}, WalConfig, dec_hook=_hook)
    with pytest.raises(msgspec.ValidationError, match="unknown field `segment`"):
        msgspec.convert({"dir": "w", "segment": 1}, WalConfig, dec_hook=_hook)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 * 1024**3), ("512Mi", 512 * MiB), ("64KB", 64_000), ("1.5 GiB", 3 * 1024**3 // 2), ("100", 100), (4096, 4096), ("7b", 7)],
)
def test_sizes_parse_binary_and_decimal_units(text: object, size: int) -> None:
    assert ByteSize.parse(text) == size


@pytest.mark.parametrize("bad", ["2 gigs", "", "-1KiB", True, -5, 1.5, "GiB"])
def test_sizes_refuse_what_is_not_a_size(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        ByteSize.parse(bad)


async def test_pending_traces_come_back_with_their_fragments_in_order_and_deadline_times(tmp_path: Path) -> None:
    wal, recovered = open_log(tmp_path)
    assert (recovered.pending, recovered.kept, recovered.settled) == ({}, {}, {})
    a, b = new_trace_id(), new_trace_id()
    parts = [request((a, 2), (b, 1)), request((a, 1), root=True), request((a, 3))]
    await wal.append(parts[0], T0)
    await wal.append(parts[1], T0 + 1.5)
    await wal.append(parts[2], T0 + 2.0)
    wal.close()

    recovered = reopen(tmp_path)
    assert list(recovered.pending) == [a, b] and recovered.kept == {}
    trace = recovered.pending[a]
    assert [e.received for e in trace.entries] == [T0, T0 + 1.5, T0 + 2.0]
    assert [e.span_count for e in trace.entries] == [2, 1, 3] and [e.has_root for e in trace.entries] == [False, True, False]
    assert [e.facts for e in trace.entries] == [part[a].facts for part in parts]
    assert trace.data == b"".join(part[a].data for part in parts)
    assert (trace.first_seen, trace.root_seen, trace.span_count, spans_in(trace.data)) == (T0, T0 + 1.5, 6, 6)
    assert recovered.pending[b].data == parts[0][b].data and recovered.pending[b].root_seen is None


async def test_decisions_settle_dropped_and_delivered_traces_and_keep_undelivered_ones(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    wal, _ = open_log(tmp_path, registry)
    dropped, kept, delivered, pending = (new_trace_id() for _ in range(4))
    body = request((dropped, 2), (kept, 3), (delivered, 1), (pending, 4))
    await wal.append(body, T0)
    verdict = Verdict(True, "slow", sample_rate=0.25)  # the decision loop's own value fits
    await wal.decided({dropped: DROP, kept: verdict, delivered: KEEP}, T0 + 10)
    await wal.delivered({delivered: KEEP}, T0 + 11)
    wal.close()

    registry = CollectorRegistry()
    wal, recovered = open_log(tmp_path, registry)
    assert list(recovered.pending) == [pending] and recovered.pending[pending].data == body[pending].data
    assert list(recovered.kept) == [kept]
    assert recovered.kept[kept].decision == LoggedDecision(True, "slow", 0.25)
    assert recovered.kept[kept].data == body[kept].data
    assert {tid: (s.decision, s.at) for tid, s in recovered.settled.items()} == {
        dropped: (DROP, T0 + 10),
        delivered: (KEEP, T0 + 11),
    }
    assert registry.get_sample_value("tailsampler_wal_replayed_traces_total", {"state": "pending"}) == 1
    assert registry.get_sample_value("tailsampler_wal_replayed_traces_total", {"state": "kept"}) == 1
    assert registry.get_sample_value("tailsampler_wal_replayed_spans_total", {"state": "kept"}) == 3
    assert registry.get_sample_value("tailsampler_wal_replayed_spans_total", {"state": "pending"}) == 4

    await wal.delivered({kept: verdict}, T0 + 20)
    await wal.decided({pending: DROP}, T0 + 21)
    wal.close()
    recovered = reopen(tmp_path)
    assert (recovered.pending, recovered.kept) == ({}, {})


async def test_late_spans_of_a_kept_trace_wait_for_their_own_delivery(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    tid = new_trace_id()
    first, late = request((tid, 2)), request((tid, 1))
    await wal.append(first, T0)
    await wal.decided({tid: KEEP}, T0 + 5)
    await wal.append(late, T0 + 6, decided={tid: KEEP})  # while the trace's own delivery is under way
    await wal.delivered({tid: KEEP}, T0 + 7)  # the decided data is delivered; the late span is not yet
    wal.close()
    recovered = reopen(tmp_path)
    assert list(recovered.kept) == [tid] and recovered.kept[tid].data == first[tid].data + late[tid].data

    # the restarted agent delivers the whole trace once: one delivery settles it
    wal, recovered = open_log(tmp_path)
    assert list(recovered.kept) == [tid]
    await wal.delivered({tid: KEEP}, T0 + 20)
    wal.close()
    assert reopen(tmp_path).kept == {}

    # late spans after the trace was settled are a kept trace of their own
    wal, _ = open_log(tmp_path)
    await wal.append(late, T0 + 30, decided={tid: KEEP})
    wal.close()
    recovered = reopen(tmp_path)
    assert recovered.kept[tid].data == late[tid].data and recovered.kept[tid].decision == KEEP


async def test_decisions_made_at_ingest_log_kept_fragments_and_settle_dropped_traces(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    kept, dropped, buffered = new_trace_id(), new_trace_id(), new_trace_id()
    body = request((kept, 2), (buffered, 1))
    await wal.append(body, T0, decided={kept: KEEP, dropped: DROP})  # overload relief's verdicts
    await wal.append({}, T0 + 1, decided={new_trace_id(): DROP})  # a request relief dropped whole
    wal.close()
    wal, recovered = open_log(tmp_path)
    assert list(recovered.kept) == [kept] and recovered.kept[kept].data == body[kept].data
    assert list(recovered.pending) == [buffered] and recovered.settled[dropped].decision == DROP
    await wal.delivered({kept: KEEP}, T0 + 2)
    wal.close()
    assert reopen(tmp_path).kept == {}


async def test_a_trace_that_comes_back_after_being_dropped_is_pending_again(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    tid = new_trace_id()
    await wal.append(request((tid, 2)), T0)
    await wal.decided({tid: DROP}, T0 + 1)
    again = request((tid, 1))
    await wal.append(again, T0 + 100)  # the decision cache had forgotten it
    wal.close()
    recovered = reopen(tmp_path)
    assert recovered.pending[tid].data == again[tid].data and recovered.pending[tid].first_seen == T0 + 100
    assert tid not in recovered.settled


async def test_segments_are_removed_once_everything_in_them_is_settled(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path, fsync="always", max_bytes=MiB)  # 64 KiB segments
    for round_ in range(120):
        traces = [new_trace_id() for _ in range(10)]
        await wal.append(request(*((tid, 4) for tid in traces)), T0 + round_)
        await wal.decided({tid: DROP for tid in traces}, T0 + round_)
        assert len(segment_files(tmp_path)) <= 2
        assert wal.disk_bytes <= 2 * 64 * 1024
    total = sum((tmp_path / name).stat().st_size for name in segment_files(tmp_path))
    assert wal.disk_bytes == total
    wal.close()
    recovered = reopen(tmp_path)
    assert (recovered.pending, recovered.kept) == ({}, {})


async def test_live_traces_are_carried_forward_so_disk_stays_bounded_by_what_is_buffered(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    wal, _ = open_log(tmp_path, registry, fsync="never", max_bytes=MiB)
    segment = 64 * 1024
    long_lived, undelivered = new_trace_id(), new_trace_id()
    kept_body, late_body = request((undelivered, 5)), request((undelivered, 1))
    await wal.append(kept_body, T0)
    await wal.decided({undelivered: KEEP}, T0)  # its exporter is down for the whole run
    await wal.append(late_body, T0, decided={undelivered: KEEP})  # and a late span of it waits too
    parts = []
    written = 0
    for round_ in range(400):  # about 5 MiB written through a 1 MiB log
        traces = [new_trace_id() for _ in range(8)]
        body = request((long_lived, 1), *((tid, 20) for tid in traces))
        parts.append(body[long_lived])
        written += sum(f.size for f in body.values())
        await wal.append(body, T0 + round_)
        await wal.decided({tid: DROP for tid in traces}, T0 + round_)
        live = sum(p.size for p in parts) + kept_body[undelivered].size + late_body[undelivered].size
        assert wal.disk_bytes <= 2 * live + 4 * segment, f"round {round_}"
    assert written > 4 * MiB
    assert registry.get_sample_value("tailsampler_wal_carried_bytes_total") > 0
    assert len(segment_files(tmp_path)) <= 5
    await wal.delivered({undelivered: KEEP}, T0 + 500)  # the trace's delivery; its late span's is still due
    wal.close()

    recovered = reopen(tmp_path)
    trace = recovered.pending[long_lived]
    assert trace.data == b"".join(p.data for p in parts)
    assert [e.received for e in trace.entries] == [T0 + r for r in range(400)]
    assert recovered.kept[undelivered].data == kept_body[undelivered].data + late_body[undelivered].data
    assert recovered.kept[undelivered].decision == KEEP
    assert list(recovered.pending) == [long_lived] and list(recovered.kept) == [undelivered]


async def test_max_bytes_refuses_a_request_whole_and_takes_requests_again_once_traces_settle(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path, fsync="never", max_bytes=MiB)
    accepted: list[bytes] = []
    with pytest.raises(WalFull, match=f"write-ahead log {tmp_path} full"):
        for i in range(10_000):
            tid = new_trace_id()
            await wal.append(request((tid, 10)), T0 + i)
            accepted.append(tid)
    assert MiB - 16 * 1024 < wal.disk_bytes <= MiB
    wal.close()

    wal, recovered = open_log(tmp_path, fsync="never", max_bytes=MiB)
    assert list(recovered.pending) == accepted
    await wal.decided({tid: DROP for tid in accepted}, T0 + 20_000)
    assert wal.disk_bytes < 2 * 64 * 1024
    late = new_trace_id()
    await wal.append(request((late, 10)), T0 + 20_001)
    wal.close()
    assert list(reopen(tmp_path).pending) == [late]


async def test_fsync_always_shares_one_flush_between_concurrent_requests(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    wal, _ = open_log(tmp_path, registry, fsync="always")
    first = new_trace_id()
    await wal.append(request((first, 2)), T0)  # flushed, with the new segment's directory entry
    before = registry.get_sample_value("tailsampler_wal_fsync_seconds_count")
    traces = [new_trace_id() for _ in range(200)]
    commits = [wal.append(request((tid, 2)), T0) for tid in traces]  # 200 requests in flight at once
    await asyncio.gather(*commits)
    assert registry.get_sample_value("tailsampler_wal_fsync_seconds_count") - before == 1
    wal.close()
    assert list(reopen(tmp_path).pending) == [first, *traces]


async def test_fsync_interval_flushes_in_the_background(tmp_path: Path) -> None:
    from tests.waiting import eventually

    registry = CollectorRegistry()
    wal, _ = open_log(tmp_path, registry, fsync="interval", fsync_interval=Duration(0.05))
    await wal.append(request((new_trace_id(), 2)), T0)  # completes without waiting for a flush
    await eventually(lambda: registry.get_sample_value("tailsampler_wal_fsync_seconds_count"), 5.0)
    wal.close()


def test_one_directory_is_one_agent_s_log(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    with pytest.raises(WalError, match=f"{tmp_path} is in use by another process"):
        open_log(tmp_path)
    wal.close()
    reopen(tmp_path)


def test_unusable_directories_and_files_are_named_in_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(WalError, match=f"write-ahead log directory {blocker}/wal: cannot create it"):
        open_log(blocker / "wal")
    with pytest.raises(WalError, match=f"write-ahead log directory {blocker}"):
        open_log(blocker)

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "00000000000000000001.wal").mkdir()  # a segment that cannot be read
    with pytest.raises(WalError, match=f"segment {unreadable}/00000000000000000001.wal: cannot read it"):
        open_log(unreadable)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "00000000000000000001.wal").write_bytes(b"SQLite format 3\x00" + bytes(100))
    (foreign / "00000000000000000002.wal").write_bytes(b"")
    with pytest.raises(WalError, match=f"segment {foreign}/00000000000000000001.wal: not a tailsampler write-ahead log"):
        open_log(foreign)


async def test_a_damaged_segment_header_stops_the_start_with_the_file_named(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    await wal.append(request((new_trace_id(), 2)), T0)
    wal.close()
    reopen(tmp_path)  # a second segment after the first
    first = tmp_path / segment_files(tmp_path)[0]
    raw = bytearray(first.read_bytes())
    raw[12] ^= 0x40  # the sequence number
    first.write_bytes(bytes(raw))
    with pytest.raises(WalError, match=f"segment {first}: segment header checksum mismatch; move the file out"):
        open_log(tmp_path)


async def test_a_newest_segment_left_empty_by_a_crash_is_removed(tmp_path: Path) -> None:
    wal, _ = open_log(tmp_path)
    tid = new_trace_id()
    await wal.append(request((tid, 2)), T0)
    wal.close()
    (tmp_path / "00000000000000000002.wal").write_bytes(b"")  # created, then killed before its header
    recovered = reopen(tmp_path)
    assert list(recovered.pending) == [tid] and recovered.torn_bytes == 0
    assert "00000000000000000002.wal" in segment_files(tmp_path)  # the new agent's segment, this time with a header
    assert reopen(tmp_path).pending.keys() == {tid}
