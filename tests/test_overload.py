"""Overload relief with real traffic: it engages when the buffer fills, decides new traces at once
by the probabilistic hash (errors always kept), lets buffered traces finish under the policies,
releases when the buffer drains, and its decisions are shared through Redis by every agent."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import Status, StatusCode

from tailsampler.collector.app import Collector
from tailsampler.collector.overload import ERROR_POLICY, POLICY, OverloadConfig, ReliefVerdicts
from tailsampler.policies.probabilistic import DEFAULT_HASH_SALT, fnv1a_64, threshold
from tests.collectors import StartCollector, collector_config
from tests.otlp_sink import GrpcSink
from tests.sdk import SdkClient, remote_parent
from tests.waiting import eventually

ERRORS = [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}]
OVERLOAD = {"activate_at": "80%", "deactivate_at": "40%", "sampling_percentage": 10, "min_duration": "0s"}


def send(client: SdkClient, count: int, error_every: int = 10) -> dict[str, bool]:
    """``count`` traces of a root and a child; every ``error_every``-th child fails."""
    sent = {}
    for i in range(count):
        with client.tracer.start_as_current_span("GET /cart") as root:
            with client.tracer.start_as_current_span("db") as child:
                if i % error_every == 0:
                    child.set_status(Status(StatusCode.ERROR, "boom"))
        sent[f"{root.get_span_context().trace_id:032x}"] = i % error_every == 0
    return sent


def policies_seen(sink: GrpcSink) -> dict[str, str]:
    """Each kept trace's deciding policy, as recording put it on its scopes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    seen: dict[str, str] = {}
    for body in sink.requests:
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            for ss in rs.scope_spans:
                policy = next(a.value.string_value for a in ss.scope.attributes if a.key == "sampling.policy")
                for span in ss.spans:
                    seen[span.trace_id.hex()] = policy
    return seen


def hash_keeps(trace_id: str, percentage: float) -> bool:
    return fnv1a_64(bytes.fromhex(trace_id), fnv1a_64(DEFAULT_HASH_SALT.encode())) <= threshold(percentage)


async def test_relief_engages_when_the_buffer_fills_and_releases_when_it_drains(
    start_collector: StartCollector, otlp_grpc_sink: GrpcSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailsampler.collector.overload")
    collector = await start_collector(collector_config(
        [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True, "compression": "none"}],
        {"decision_wait": "2s", "num_traces": 100, "policies": ERRORS, "overload": OVERLOAD,
         "recording": {"policy_attribute": True}},
    ))
    value = collector.metrics.registry.get_sample_value
    client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
    sent: dict[str, bool] = {}
    ready_while_on = None
    base = f"http://127.0.0.1:{collector.admin.port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(10):  # waves faster than decision_wait lets the buffer drain
            sent |= send(client, 30)
            await asyncio.to_thread(client.flush)
            await asyncio.sleep(0.3)
            if value("tailsampler_overload_active") == 1 and ready_while_on is None:
                async with session.get(f"{base}/health/ready") as response:
                    ready_while_on = response.status, (await response.json())["components"]["overload_relief"]
    assert (value("tailsampler_overload_activations_total") or 0) >= 1
    assert ready_while_on is not None and ready_while_on[0] == 200, "relief is the agent coping: it stays ready"
    assert ready_while_on[1]["active"] is True
    assert (await collector.buffer.occupancy()).traces <= 100

    await eventually(lambda: value("tailsampler_overload_active") == 0, 15, "relief releases once the buffer drains")
    assert "overload relief on: num_traces at" in caplog.text and "overload relief off after" in caplog.text

    def decided() -> float:
        return sum(value("tailsampler_traces_decided_total", {"decision": d, "policy": p}) or 0
                   for d in ("kept", "dropped") for p in ("", "errors", POLICY, ERROR_POLICY))

    await eventually(lambda: decided() == len(sent), 15, "every trace is decided once")
    at_once = sum(value("tailsampler_traces_decided_total", {"decision": d, "policy": POLICY}) or 0 for d in ("kept", "dropped"))
    at_once += value("tailsampler_traces_decided_total", {"decision": "kept", "policy": ERROR_POLICY}) or 0
    assert at_once >= 50, "relief decided new traces at once"
    errors = [t for t, error in sent.items() if error]
    await otlp_grpc_sink.wait_for(lambda: set(errors) <= otlp_grpc_sink.spans_by_trace().keys(), 10)
    seen = policies_seen(otlp_grpc_sink)
    for trace_id, policy in seen.items():
        assert policy in ("errors", POLICY, ERROR_POLICY)
        if policy == POLICY:
            assert hash_keeps(trace_id, 10), "relief keeps the traces probabilistic at the same percentage keeps"
        if not sent[trace_id]:
            assert policy == POLICY, "only errors and the hashed share are kept"
    for trace_id in errors:
        assert seen[trace_id] in ("errors", ERROR_POLICY, POLICY), "every error trace is kept"
        assert len(otlp_grpc_sink.spans_by_trace()[trace_id]) == 2

    more = send(client, 5)  # relief is off: new traces wait in the buffer again
    await asyncio.to_thread(client.flush)
    await eventually(lambda: _buffered(collector, 5), 5)
    client.shutdown()
    assert len(more) == 5


async def _buffered(collector: Collector, count: int) -> bool:
    return (await collector.buffer.occupancy()).traces == count


async def test_a_relief_decision_on_one_agent_is_followed_by_another_through_redis(
    start_collector: StartCollector, otlp_grpc_sink: GrpcSink, clean_redis_url: str
) -> None:
    """Agent one is in relief (a bound it passes with one trace); agent two is not. A trace that
    starts on one is decided there at once, and its span through two follows that decision."""
    buffer = {"type": "redis", "url": clean_redis_url, "key_prefix": f"relief{time.time_ns()}"}
    exporter = [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True, "compression": "none"}]
    stressed = await start_collector(collector_config(
        exporter, {"decision_wait": "30s", "num_traces": 2, "policies": ERRORS,
                   "overload": {**OVERLOAD, "activate_at": "50%"}, "recording": {"policy_attribute": True}},
        buffer=buffer,
    ))
    calm = await start_collector(collector_config(
        exporter, {"decision_wait": "30s", "num_traces": 2, "policies": ERRORS, "recording": {"policy_attribute": True}},
        buffer=buffer,
    ))
    one = SdkClient("grpc", f"127.0.0.1:{stressed.grpc.port}", service="one")
    two = SdkClient("grpc", f"127.0.0.1:{calm.grpc.port}", service="two")
    with one.tracer.start_as_current_span("warm-up"):
        pass
    await asyncio.to_thread(one.flush)
    await eventually(lambda: stressed.overload.relief is not None, 10, "relief on at one trace in two")

    relief = ReliefVerdicts.of(OverloadConfig(sampling_percentage=10))
    kept = dropped = None
    while kept is None or dropped is None:
        with one.tracer.start_as_current_span("GET /item") as root:
            trace_id = f"{root.get_span_context().trace_id:032x}"
        if hash_keeps(trace_id, 10):
            kept = kept or trace_id
        else:
            dropped = dropped or trace_id
    await asyncio.to_thread(one.flush)
    for trace_id in (kept, dropped):
        with two.tracer.start_as_current_span("child", context=remote_parent(trace_id)):
            pass
    await asyncio.to_thread(two.flush)
    await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.spans_by_trace().get(kept, [])) == 2, 10)
    await eventually(lambda: (calm.metrics.registry.get_sample_value("tailsampler_late_spans_total", {"decision": "dropped"}) or 0) >= 1, 10)
    assert policies_seen(otlp_grpc_sink)[kept] == relief.kept.policy
    assert dropped not in otlp_grpc_sink.spans_by_trace()
    one.shutdown()
    two.shutdown()


def test_relief_settings_are_checked(tmp_path: Path) -> None:
    from tailsampler.collector.config import ConfigError, parse_config

    text = (
        "tail_sampling:\n  policies: [{name: all, type: always_sample}]\n"
        "  overload: {activate_at: 50%, deactivate_at: 60%, sampling_percentage: 120, max_decision_lag: 0s, colour: red}\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "x.yaml")
    message = str(raised.value)
    assert "x.yaml: tail_sampling.overload: Object contains unknown field `colour`" in message
    text = text.replace(", colour: red", "")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "x.yaml")
    message = str(raised.value)
    for key in ("deactivate_at", "sampling_percentage", "max_decision_lag"):
        assert f"x.yaml: tail_sampling.overload.{key}" in message
    with pytest.raises(ConfigError, match=r"x.yaml: tail_sampling.overload.activate_at: expected a percentage"):
        parse_config(text.replace("50%", "lots"), "x.yaml")
    config = parse_config("tail_sampling:\n  policies: [{name: all, type: always_sample}]\n  overload: {}\n", "x.yaml")
    overload: Any = config.tail_sampling.overload
    assert (overload.activate_at, overload.deactivate_at, overload.sampling_percentage) == (90, 75, 10)


async def test_relief_engages_when_decisions_fall_behind(
    start_collector: StartCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """An exporter whose backend never answers fills its queue; the decision round waits on it
    and falls behind its deadlines, which is overload too, however empty the buffer."""
    caplog.set_level(logging.INFO, logger="tailsampler.collector.overload")
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    try:
        collector = await start_collector(collector_config(
            [{"type": "otlp", "endpoint": f"127.0.0.1:{blackhole.getsockname()[1]}", "insecure": True,
              "queue_size": 1, "batch_max_traces": 1, "timeout": "60s"}],
            {"decision_wait": "100ms", "policies": [{"name": "all", "type": "always_sample"}],
             "overload": {**OVERLOAD, "max_decision_lag": "1s"}},
            service={"shutdown_timeout": "1s"},
        ))
        client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}")
        for _ in range(5):
            with client.tracer.start_as_current_span("GET /"):
                pass
        await asyncio.to_thread(client.flush)
        await eventually(lambda: collector.overload.relief is not None, 10, "relief on: decisions are behind")
        assert "overload relief on: decision lag at" in caplog.text
        assert (await collector.buffer.occupancy()).traces <= 5
        client.shutdown()
    finally:
        blackhole.close()
