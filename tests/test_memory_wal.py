"""The memory buffer with a write-ahead log, on real files: what one buffer logs, the next one
opened on the same directory takes back (pending traces at their deadlines, decisions, kept
traces to deliver again), and what a full or closed log does to requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.buffer import BufferFull, BufferUnavailable, MemoryTraceBuffer, Settlement, WalError, make_buffer
from tailsampler.collector.config import Config
from tailsampler.collector.overload import OverloadConfig, ReliefVerdicts
from tailsampler.common.settings import decode
from tailsampler.common.verdict import DROPPED, Verdict
from tests.otlp_data import fragments, new_trace_id
from tests.test_buffer_contract import relief_ids, spans_of

T0 = 1_800_000_000.0
KEPT = Verdict(True, "errors", 4.0)


async def opened(directory: Path, now: float = T0, tail_sampling: dict[str, Any] | None = None, **buffer: Any) -> tuple[MemoryTraceBuffer, list[Any]]:
    data = {
        "tail_sampling": {"decision_wait": "10s", **(tail_sampling or {})},
        "buffer": {"type": "memory", "tick": "100ms", "wal": {"dir": str(directory), **buffer.pop("wal", {})}, **buffer},
    }
    made, state = make_buffer(decode(data, Config), CollectorRegistry())
    assert isinstance(made, MemoryTraceBuffer)
    undelivered = await made.open(now)
    assert (await state.check())[0]
    return made, undelivered


async def test_pending_traces_come_back_at_their_original_deadlines(tmp_path: Path) -> None:
    buffer, undelivered = await opened(tmp_path, tail_sampling={"decision_wait_after_root_received": "1s"})
    assert undelivered == []
    slow, rooted = new_trace_id(), new_trace_id()
    first, later = fragments(slow, 2), fragments(slow, 1)
    await buffer.append({**first, **fragments(rooted, 1)}, T0)
    await buffer.append({**later, **fragments(rooted, 2, root=True)}, T0 + 1)
    await buffer.close()

    buffer, undelivered = await opened(tmp_path, T0 + 1.5, tail_sampling={"decision_wait_after_root_received": "1s"})
    assert undelivered == [] and (await buffer.occupancy()).traces == 2
    assert await buffer.claim_due(T0 + 1.9, 10) == []
    assert [c.trace_id for c in await buffer.claim_due(T0 + 2.1, 10)] == [rooted]  # root at T0 + 1, after root 1s
    assert await buffer.claim_due(T0 + 9.9, 10) == []
    [claimed] = await buffer.claim_due(T0 + 10.1, 10)  # first span at T0, decision_wait 10s
    assert claimed.trace_id == slow and claimed.data == first[slow].data + later[slow].data
    await buffer.close()

    buffer, _ = await opened(tmp_path, T0 + 100)  # both deadlines passed while no agent ran
    assert {c.trace_id for c in await buffer.claim_due(T0 + 100.1, 10)} == {slow, rooted}
    await buffer.close()


async def test_decisions_are_remembered_and_kept_traces_not_delivered_come_back(tmp_path: Path) -> None:
    buffer, _ = await opened(tmp_path)
    kept, dropped, delivered = new_trace_id(), new_trace_id(), new_trace_id()
    body = {**fragments(kept, 3), **fragments(dropped, 2), **fragments(delivered, 1)}
    await buffer.append(body, T0)
    claimed = await buffer.claim_due(T0 + 11, 10)
    verdicts = [Settlement(kept, KEPT), Settlement(dropped, DROPPED), Settlement(delivered, KEPT)]
    buffer.decided(verdicts, T0 + 11)
    assert len(claimed) == 3 and await buffer.settle(verdicts, T0 + 11) == {}
    buffer.delivered([Settlement(delivered, KEPT)], T0 + 12)
    await buffer.close()

    buffer, undelivered = await opened(tmp_path, T0 + 20)
    assert [(u.trace_id, u.data, u.verdict, u.span_count) for u in undelivered] == [(kept, body[kept].data, KEPT, 3)]
    assert (await buffer.occupancy()).traces == 0 and await buffer.claim_due(T0 + 100, 10) == []
    late = await buffer.append({**fragments(kept, 1), **fragments(dropped, 4), **fragments(delivered, 1)}, T0 + 21)
    assert late.late_kept == {kept: KEPT, delivered: KEPT} and late.late_dropped_spans == 4
    buffer.delivered([Settlement(kept, KEPT)], T0 + 22)  # the trace delivered again
    await buffer.close()

    buffer, undelivered = await opened(tmp_path, T0 + 30)
    # the late spans just forwarded were not reported delivered: they go out again, and with
    # them the rest of their trace when it has not been reported delivered since the restart
    assert {u.trace_id: len(spans_of(u.data)) for u in undelivered} == {kept: 4, delivered: 1}
    await buffer.close()


async def test_decisions_older_than_the_decision_cache_ttl_are_forgotten(tmp_path: Path) -> None:
    buffer, _ = await opened(tmp_path)
    tid = new_trace_id()
    await buffer.append(fragments(tid), T0)
    await buffer.claim_due(T0 + 11, 10)
    buffer.decided([Settlement(tid, DROPPED)], T0 + 11)
    await buffer.settle([Settlement(tid, DROPPED)], T0 + 11)
    await buffer.close()
    buffer, _ = await opened(tmp_path, T0 + 11 + 301)  # decision_cache.ttl 300s
    assert (await buffer.append(fragments(tid), T0 + 312)).late_dropped_spans == 0
    assert (await buffer.occupancy()).traces == 1
    await buffer.close()


async def test_spans_that_arrive_while_a_trace_is_decided_are_part_of_its_delivery(tmp_path: Path) -> None:
    buffer, _ = await opened(tmp_path)
    kept, dropped = new_trace_id(), new_trace_id()
    on_time = fragments(kept, 2)
    await buffer.append({**on_time, **fragments(dropped, 2)}, T0)
    await buffer.claim_due(T0 + 11, 10)
    buffer.decided([Settlement(kept, KEPT), Settlement(dropped, DROPPED)], T0 + 11)
    straggler = fragments(kept, 1)
    await buffer.append({**straggler, **fragments(dropped, 3)}, T0 + 11.05)
    stragglers = await buffer.settle([Settlement(kept, KEPT), Settlement(dropped, DROPPED)], T0 + 11.1)
    assert set(stragglers) == {kept, dropped}
    buffer.delivered([], T0 + 11.2)  # the on-time spans are out; the straggler is not yet
    await buffer.close()

    buffer, undelivered = await opened(tmp_path, T0 + 20)
    assert [(u.trace_id, u.data) for u in undelivered] == [(kept, on_time[kept].data + straggler[kept].data)]
    assert (await buffer.occupancy()).traces == 0, "a dropped trace's stragglers are not pending again"
    buffer.delivered([Settlement(kept, KEPT)], T0 + 21)
    await buffer.close()
    assert (await opened(tmp_path, T0 + 30))[1] == []


async def test_overload_relief_verdicts_are_logged(tmp_path: Path) -> None:
    buffer, _ = await opened(tmp_path)
    relief = ReliefVerdicts.of(OverloadConfig(sampling_percentage=50))
    keep, drop = relief_ids(relief)
    kept_body = fragments(keep, 2)
    result = await buffer.append({**kept_body, **fragments(drop, 2)}, T0, relief)
    assert result.decided_now == {keep: relief.kept, drop: relief.dropped}
    await buffer.close()

    buffer, undelivered = await opened(tmp_path, T0 + 1)
    assert [(u.trace_id, u.data, u.verdict) for u in undelivered] == [(keep, kept_body[keep].data, relief.kept)]
    later = await buffer.append({**fragments(keep), **fragments(drop, 3)}, T0 + 2)
    assert later.late_kept == {keep: relief.kept} and later.late_dropped_spans == 3
    await buffer.close()


@pytest.mark.parametrize("overflow", ["backpressure", "decide_early"])
async def test_a_full_log_applies_the_overflow_behaviour(tmp_path: Path, overflow: str) -> None:
    buffer, _ = await opened(tmp_path, wal={"max_bytes": "1MiB", "fsync": "never"}, overflow=overflow)
    appended = 0
    with pytest.raises(BufferFull, match=r"write-ahead log .* full: .*\(buffer.wal.max_bytes\)") as refused:
        for appended in range(10_000):
            await buffer.append(fragments(new_trace_id(), 10), T0 + appended * 0.001)
    assert refused.value.retry_after >= 1.0
    held = await buffer.occupancy()
    assert held.traces == appended > 100, "nothing of the refused request is buffered"
    early = await buffer.claim_due(T0, 100_000)
    if overflow == "backpressure":
        assert early == []
        due = await buffer.claim_due(T0 + 30, 100_000)
    else:
        assert "decided now to free it" in refused.value.reason and early
        assert {c.reason for c in early} == {"overflow"}
        due = early
    buffer.decided([Settlement(c.trace_id, DROPPED) for c in due], T0 + 30)
    await buffer.settle([Settlement(c.trace_id, DROPPED) for c in due], T0 + 30)
    await buffer.append(fragments(new_trace_id(), 10), T0 + 31)  # room again
    await buffer.close()


async def test_a_closed_log_refuses_requests_and_readiness(tmp_path: Path) -> None:
    data = {"tail_sampling": {"decision_wait": "10s"}, "buffer": {"type": "memory", "wal": {"dir": str(tmp_path)}}}
    buffer, state = make_buffer(decode(data, Config), CollectorRegistry())
    await buffer.open(T0)
    await buffer.append(fragments(new_trace_id()), T0)
    await buffer.close()
    with pytest.raises(BufferUnavailable, match=f"write-ahead log {tmp_path} is closed"):
        await buffer.append(fragments(new_trace_id()), T0 + 1)
    assert await state.check() == (False, f"write-ahead log {tmp_path} is closed")
    assert (await buffer.occupancy()).traces == 1


async def test_one_directory_serves_one_buffer(tmp_path: Path) -> None:
    first, _ = await opened(tmp_path)
    data = {"tail_sampling": {"decision_wait": "10s"}, "buffer": {"type": "memory", "wal": {"dir": str(tmp_path)}}}
    second, _ = make_buffer(decode(data, Config), CollectorRegistry())
    with pytest.raises(WalError, match="in use by another process"):
        await second.open(T0)
    await first.close()
