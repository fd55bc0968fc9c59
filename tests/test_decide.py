"""The decision loop keeps what it cannot evaluate, and settles kept traces only once delivered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tailsampler.collector.app import Collector
from tailsampler.collector.config import parse_config
from tailsampler.collector.wire import Fragment
from tailsampler.common.trace_facts import FACTS_SIZE
from tests.collectors import collector_config
from tests.otlp_data import fragments, new_trace_id


async def test_a_trace_that_cannot_be_evaluated_is_kept_not_lost(start_collector: Any, tmp_path: Path) -> None:
    out = tmp_path / "kept.jsonl"
    collector: Collector = await start_collector(collector_config([{"type": "file", "path": str(out)}]))
    broken, fine = new_trace_id(), new_trace_id()
    unreadable = b"\x02" + bytes(FACTS_SIZE - 1)  # a facts record of a version no agent writes
    await collector.buffer.append({broken: Fragment([b"\x0a\x05\xff\xff"], unreadable), **fragments(fine)}, time.time())
    await collector.loop.decide(await collector.buffer.claim_due(time.time(), 10, draining=True))
    await collector.loop.settled()
    stats = await collector.stats()
    assert stats["traces"]["by_policy"]["evaluation_error"]["kept"] == 1
    assert stats["traces"]["dropped"] == 1
    assert collector.metrics.registry.get_sample_value("tailsampler_decision_errors_total") == 1


async def test_kept_traces_stay_in_the_buffer_until_the_exporter_is_done(
    otlp_grpc_sink: Any, tmp_path: Path
) -> None:
    """The sink refuses the first attempts; until delivery the trace is still buffered (claimed)."""
    otlp_grpc_sink.fail("UNAVAILABLE", times=2, retry_after=0.2)
    config = collector_config(
        [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True, "retry_on_failure": {"initial_interval": "100ms"}}],
        tail_sampling={"policies": [{"name": "all", "type": "always_sample"}]},
    )
    collector = Collector(parse_config(yaml.safe_dump(config), "t.yaml"))
    await collector.start()
    try:
        trace_id = new_trace_id()
        await collector.buffer.append(fragments(trace_id, 3), time.time())
        await collector.loop.decide(await collector.buffer.claim_due(time.time(), 10, draining=True))
        assert (await collector.buffer.occupancy()).traces == 1  # handed over, not yet delivered
        await collector.loop.settled()
        assert trace_id.hex() in otlp_grpc_sink.spans_by_trace()
        assert (await collector.buffer.occupancy()).traces == 0
    finally:
        await collector.stop()


async def test_a_decision_round_counts_traces_spans_and_votes(start_collector: Any, tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}],
                              tail_sampling={"policies": [
                                  {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
                                  {"name": "slow", "type": "latency", "latency": {"threshold_ms": 100}},
                              ]})
    collector: Collector = await start_collector(config)
    failed, slow, fine = new_trace_id(), new_trace_id(), new_trace_id()
    await collector.buffer.append(
        {**fragments(failed, 2, error=True), **fragments(slow, 3, duration_ms=500), **fragments(fine, 4)}, time.time()
    )
    await collector.loop.decide(await collector.buffer.claim_due(time.time(), 10, draining=True))
    await collector.loop.settled()
    value = collector.metrics.registry.get_sample_value
    assert value("tailsampler_traces_decided_total", {"decision": "kept", "policy": "errors"}) == 1
    assert value("tailsampler_traces_decided_total", {"decision": "kept", "policy": "slow"}) == 1
    assert value("tailsampler_traces_decided_total", {"decision": "dropped", "policy": ""}) == 1
    assert value("tailsampler_spans_decided_total", {"decision": "kept"}) == 5
    assert value("tailsampler_spans_decided_total", {"decision": "dropped"}) == 4
    assert value("tailsampler_policy_votes_total", {"policy": "errors", "vote": "sampled"}) == 1
    assert value("tailsampler_policy_votes_total", {"policy": "errors", "vote": "not_sampled"}) == 2
    assert value("tailsampler_policy_votes_total", {"policy": "slow", "vote": "sampled"}) == 1
