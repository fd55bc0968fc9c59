"""The TraceBuffer contract: every buffer implementation must pass these, on the same clock.

Time is passed in explicitly (``now``), so deadlines, roots and leases are tested without sleeps.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client import CollectorRegistry

from tailsampler.collector import wire
from tailsampler.collector.buffer import BufferFull, Settlement, TraceBuffer, make_buffer
from tailsampler.collector.config import Config
from tailsampler.collector.overload import OverloadConfig, ReliefVerdicts
from tailsampler.common.settings import decode
from tailsampler.common.verdict import DROPPED, Verdict
from tailsampler.policies import TraceView
from tests.otlp_data import fragments, new_trace_id, stored_size

T0 = 1_800_000_000.0
MakeBuffer = Callable[..., Awaitable[TraceBuffer]]


@pytest.fixture(params=["memory", "memory_wal", "redis", "redis_cluster"])
async def make(request: pytest.FixtureRequest) -> Any:
    """Build buffers of one kind from config overrides, each opened as an agent opens it; Redis
    servers start only when asked for, and each memory buffer with a write-ahead log gets a
    directory of its own."""
    kind = request.param
    created: list[TraceBuffer] = []
    buffer_cfg: dict[str, Any] = {"type": "memory", "tick": "100ms"}
    if kind == "redis":
        buffer_cfg = {"type": "redis", "url": request.getfixturevalue("redis_url"), "tick": "100ms"}
    elif kind == "redis_cluster":
        buffer_cfg = {"type": "redis", "url": request.getfixturevalue("redis_cluster_url"), "cluster": True, "tick": "100ms"}
    prefix = f"t{new_trace_id().hex()[:8]}"

    async def build(tail_sampling: dict[str, Any] | None = None, **buffer: Any) -> TraceBuffer:
        cfg = {"type": "memory", **buffer_cfg, **buffer}
        if cfg["type"] == "redis":
            cfg["key_prefix"] = prefix
        else:
            cfg.pop("key_prefix", None)
        if kind == "memory_wal":
            cfg["wal"] = {"dir": str(request.getfixturevalue("tmp_path") / f"wal{len(created)}")}
        data = {"tail_sampling": {"decision_wait": "10s", **(tail_sampling or {})}, "buffer": cfg}
        config = decode(data, Config)
        made, _ = make_buffer(config, CollectorRegistry())
        assert await made.open(T0) == []
        created.append(made)
        return made

    yield build
    for made in created:
        await made.close()


def spans_of(data: bytes) -> list[bytes]:
    return [s.span_id for rs in TracesData.FromString(data).resource_spans for ss in rs.scope_spans for s in ss.spans]


async def test_trace_waits_for_its_deadline_then_is_claimed_once_with_all_fragments(make: MakeBuffer) -> None:
    buffer = await make()
    tid = new_trace_id()
    first, second = fragments(tid, 2), fragments(tid, 3)
    await buffer.append(first, T0)
    await buffer.append(second, T0 + 1)
    assert await buffer.claim_due(T0 + 9.5, 100) == []
    claimed = await buffer.claim_due(T0 + 10.2, 100)
    assert [c.trace_id for c in claimed] == [tid]
    assert T0 + 10 <= claimed[0].due <= T0 + 10.2  # the deadline it was claimed for
    assert claimed[0].data == first[tid].data + second[tid].data
    assert len(spans_of(claimed[0].data)) == 5
    assert await buffer.claim_due(T0 + 20, 100) == []


async def test_a_claimed_trace_carries_the_facts_of_every_fragment_merged(make: MakeBuffer) -> None:
    buffer = await make()
    tid = new_trace_id()
    parts = [fragments(tid, 2), fragments(tid, 3, root=True, error=True), fragments(tid, 1, duration_ms=900)]
    for i, part in enumerate(parts):
        await buffer.append(part, T0 + i)
    [claimed] = await buffer.claim_due(T0 + 11, 10)
    assert claimed.facts == wire.merge_facts(b"".join(p[tid].facts for p in parts))
    view = TraceView(tid, claimed.data, claimed.facts)
    assert (view.span_count, view.byte_size, view.has_root, view.status_codes) == (6, len(claimed.data), True, {0, 2})
    straggler = fragments(tid, 2)
    await buffer.append(straggler, T0 + 11.5)
    assert await buffer.settle([Settlement(tid, DROPPED)], T0 + 12) == {tid: straggler[tid].data}


async def test_root_span_moves_the_deadline_earlier(make: MakeBuffer) -> None:
    buffer = await make({"decision_wait": "30s", "decision_wait_after_root_received": "1s"})
    with_root, without = new_trace_id(), new_trace_id()
    await buffer.append({**fragments(with_root, 2, root=True), **fragments(without, 2)}, T0)
    claimed = await buffer.claim_due(T0 + 1.2, 100)
    assert [c.trace_id for c in claimed] == [with_root]
    assert [c.trace_id for c in await buffer.claim_due(T0 + 30.2, 100)] == [without]


async def test_claim_respects_the_limit_and_hands_out_the_rest_later(make: MakeBuffer) -> None:
    buffer = await make()
    ids = {new_trace_id() for _ in range(5)}
    for tid in ids:
        await buffer.append(fragments(tid), T0)
    first = await buffer.claim_due(T0 + 11, 3)
    second = await buffer.claim_due(T0 + 11, 3)
    assert len(first) == 3 and len(second) == 2
    assert {c.trace_id for c in first + second} == ids


async def test_late_spans_follow_the_cached_decision(make: MakeBuffer) -> None:
    buffer = await make()
    kept, dropped = new_trace_id(), new_trace_id()
    await buffer.append({**fragments(kept), **fragments(dropped)}, T0)
    claimed = await buffer.claim_due(T0 + 11, 100)
    assert {c.trace_id for c in claimed} == {kept, dropped}
    await buffer.settle([Settlement(kept, Verdict(True, "errors", 10.0)), Settlement(dropped, DROPPED)], T0 + 11)
    late_kept, late_dropped = fragments(kept, 2), fragments(dropped, 3)
    result = await buffer.append({**late_kept, **late_dropped}, T0 + 12)
    assert result.late_kept == {kept: Verdict(True, "errors", 10.0)}
    assert result.late_dropped_spans == 3
    assert await buffer.claim_due(T0 + 60, 100) == []
    assert (await buffer.occupancy()).traces == 0


async def test_spans_arriving_while_a_trace_is_being_decided_come_back_from_settle(make: MakeBuffer) -> None:
    buffer = await make()
    tid = new_trace_id()
    await buffer.append(fragments(tid), T0)
    [claimed] = await buffer.claim_due(T0 + 11, 100)
    straggler = fragments(tid, 2)
    result = await buffer.append(straggler, T0 + 11.05)
    assert result.late_kept == {} and result.late_dropped_spans == 0
    assert await buffer.settle([Settlement(tid, Verdict(True, "p"))], T0 + 11.1) == {tid: straggler[tid].data}


async def test_occupancy_counts_buffered_traces_and_bytes(make: MakeBuffer) -> None:
    buffer = await make()
    a, b = new_trace_id(), new_trace_id()
    frags = {**fragments(a, 3), **fragments(b, 1)}
    await buffer.append(frags, T0)
    stats = await buffer.occupancy()
    assert stats.traces == 2
    # a memory buffer counts the fragments' bytes; a shared one what its keys hold
    size = stored_size if buffer.shared else (lambda f: len(f.data))
    assert stats.bytes == sum(map(size, frags.values()))
    claimed = await buffer.claim_due(T0 + 11, 100)
    await buffer.settle([Settlement(c.trace_id, DROPPED) for c in claimed], T0 + 11)
    assert await buffer.occupancy() == type(stats)(0, 0)


async def test_backpressure_refuses_new_traces_whole_and_keeps_the_buffered_ones(make: MakeBuffer) -> None:
    buffer = await make({"num_traces": 2}, overflow="backpressure", shards=1)
    a, b, c = new_trace_id(), new_trace_id(), new_trace_id()
    await buffer.append({**fragments(a), **fragments(b)}, T0)
    with pytest.raises(BufferFull):
        await buffer.append({**fragments(a), **fragments(c)}, T0 + 1)
    await buffer.append(fragments(a), T0 + 1)  # more spans of a buffered trace still fit
    claimed = {x.trace_id: x for x in await buffer.claim_due(T0 + 11, 100)}
    assert set(claimed) == {a, b}
    assert len(spans_of(claimed[a].data)) == 2


async def test_decide_early_hands_the_oldest_trace_to_the_decider_at_once(make: MakeBuffer) -> None:
    buffer = await make({"num_traces": 2}, overflow="decide_early", shards=1)
    old, mid, new = new_trace_id(), new_trace_id(), new_trace_id()
    await buffer.append(fragments(old), T0)
    await buffer.append(fragments(mid), T0 + 1)
    result = await buffer.append(fragments(new), T0 + 2)
    assert result.early == 1
    early = await buffer.claim_due(T0 + 2, 100)
    assert [(c.trace_id, c.reason) for c in early] == [(old, "overflow")]
    assert {c.trace_id for c in await buffer.claim_due(T0 + 13, 100)} == {mid, new}


async def test_a_trace_over_maximum_trace_size_is_decided_at_once(make: MakeBuffer) -> None:
    buffer = await make({"maximum_trace_size_bytes": 2000})
    big, small = new_trace_id(), new_trace_id()
    result = await buffer.append({**fragments(big, 40), **fragments(small, 1)}, T0)
    assert result.early == 1
    claimed = await buffer.claim_due(T0, 100)
    assert [(c.trace_id, c.reason) for c in claimed] == [(big, "size")]
    assert len(spans_of(claimed[0].data)) == 40


async def test_fragments_of_many_requests_rebuild_a_valid_trace_in_arrival_order(make: MakeBuffer) -> None:
    buffer = await make()
    tid = new_trace_id()
    parts = [fragments(tid, n, service=f"svc-{n}") for n in (1, 2, 3)]
    for i, part in enumerate(parts):
        await buffer.append(part, T0 + i * 0.1)
    [claimed] = await buffer.claim_due(T0 + 11, 10)
    data = TracesData.FromString(claimed.data)
    services = [rs.resource.attributes[0].value.string_value for rs in data.resource_spans]
    assert services == ["svc-1", "svc-2", "svc-3"]
    assert claimed.data == b"".join(p[tid].data for p in parts)


def relief_ids(relief: ReliefVerdicts) -> tuple[bytes, bytes]:
    """A trace ID the relief hash keeps, and one it drops."""
    keep = drop = None
    while keep is None or drop is None:
        tid = new_trace_id()
        if relief.choose(tid, fragments(tid)[tid]) is relief.kept:
            keep = keep or tid
        else:
            drop = drop or tid
    return keep, drop


async def test_overload_relief_decides_new_traces_at_once_and_later_spans_follow(make: MakeBuffer) -> None:
    buffer = await make()
    relief = ReliefVerdicts.of(OverloadConfig(sampling_percentage=50))
    buffered = new_trace_id()
    (keep, drop), (_, failing) = relief_ids(relief), relief_ids(relief)
    await buffer.append(fragments(buffered), T0)

    result = await buffer.append(
        {**fragments(buffered, 2), **fragments(keep), **fragments(drop, 2), **fragments(failing, 2, error=True)}, T0 + 1, relief
    )
    assert result.decided_now == {keep: relief.kept, drop: relief.dropped, failing: relief.kept_for_error}
    assert result.late_kept == {} and (await buffer.occupancy()).traces == 1, "only the buffered trace is held"

    later = await buffer.append({**fragments(keep, 2), **fragments(drop, 3)}, T0 + 2)  # relief is off again
    assert later.late_kept == {keep: relief.kept} and later.late_dropped_spans == 3
    rescued = await buffer.append(fragments(drop, 1, error=True), T0 + 3, relief)
    assert rescued.late_kept == {drop: relief.kept_for_error} and rescued.rescued == 1, "an error keeps its trace"
    assert (await buffer.append(fragments(drop), T0 + 4)).late_kept == {drop: relief.kept_for_error}

    [claimed] = await buffer.claim_due(T0 + 11, 100)
    assert claimed.trace_id == buffered and len(spans_of(claimed.data)) == 3, "a buffered trace follows its trace"


async def test_overload_relief_takes_new_traces_that_backpressure_would_refuse(make: MakeBuffer) -> None:
    buffer = await make({"num_traces": 2}, overflow="backpressure", shards=1)
    relief = ReliefVerdicts.of(OverloadConfig())
    a, b, c = new_trace_id(), new_trace_id(), new_trace_id()
    await buffer.append({**fragments(a), **fragments(b)}, T0)
    result = await buffer.append(fragments(c), T0 + 1, relief)
    assert set(result.decided_now) == {c}
    assert (await buffer.occupancy()).traces == 2


async def test_a_round_s_decisions_and_deliveries_change_nothing_a_claim_or_settle_sees(make: MakeBuffer) -> None:
    buffer = await make()
    kept, dropped, pending = new_trace_id(), new_trace_id(), new_trace_id()
    await buffer.append({**fragments(kept), **fragments(dropped)}, T0)
    await buffer.append(fragments(pending), T0 + 5)
    claimed = await buffer.claim_due(T0 + 11, 100)
    assert {c.trace_id for c in claimed} == {kept, dropped}
    verdicts = [Settlement(kept, Verdict(True, "errors")), Settlement(dropped, DROPPED)]
    buffer.decided(verdicts, T0 + 11)
    assert await buffer.settle(verdicts, T0 + 11) == {}
    buffer.delivered(verdicts[:1], T0 + 12)
    assert (await buffer.occupancy()).traces == 1
    assert [c.trace_id for c in await buffer.claim_due(T0 + 16, 100)] == [pending]
