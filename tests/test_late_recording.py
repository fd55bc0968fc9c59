"""A late span of a kept trace leaves exactly as its trace's on-time spans did: with the same
deciding policy, sample rate and tracestate threshold recorded, on both buffers, sent and
received by the OpenTelemetry SDK's exporters and a real OTLP receiver."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from tailsampler.policies.probabilistic import DEFAULT_HASH_SALT, fnv1a_64, threshold
from tests.collectors import StartCollector, collector_config
from tests.sdk import SdkClient, remote_parent

POLICIES = [{"name": "half", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}}]
RECORDING = {"policy_attribute": True, "sample_rate_attribute": True, "tracestate_threshold": True}


class KeptTraceIds(RandomIdGenerator):
    """Random trace IDs that the 50% ``probabilistic`` policy keeps, so the test needs no luck."""

    def generate_trace_id(self) -> int:
        while True:
            trace_id = super().generate_trace_id()
            if fnv1a_64(DEFAULT_HASH_SALT.encode() + trace_id.to_bytes(16, "big")) <= threshold(50):
                return trace_id


def recorded(requests: list[bytes], trace_id: str) -> list[tuple[dict[str, Any], str]]:
    """Each received span of the trace, as (its scope's attributes, its tracestate)."""
    out = []
    for body in requests:
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            for ss in rs.scope_spans:
                attributes = {kv.key: kv.value for kv in ss.scope.attributes}
                facts = {k: v.double_value if v.HasField("double_value") else v.string_value for k, v in attributes.items()}
                out += [(facts, span.trace_state) for span in ss.spans if span.trace_id.hex() == trace_id]
    return out


@pytest.fixture(params=["memory", "redis"])
def buffer(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {"type": "redis", "url": request.getfixturevalue("clean_redis_url")}
    return {"type": "memory"}


async def test_a_late_span_carries_the_sampling_facts_of_its_kept_trace(
    buffer: dict[str, Any], start_collector: StartCollector, otlp_grpc_sink: Any
) -> None:
    collector = await start_collector(collector_config(
        [{"type": "otlp", "endpoint": otlp_grpc_sink.endpoint, "insecure": True}],
        tail_sampling={"decision_wait": "300ms", "policies": POLICIES, "recording": RECORDING},
        buffer=buffer,
    ))
    client = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}", id_generator=KeptTraceIds())
    with client.tracer.start_as_current_span("GET /cart") as root:
        with client.tracer.start_as_current_span("db-query"):
            pass
    trace_id = f"{root.get_span_context().trace_id:032x}"
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: len(recorded(otlp_grpc_sink.requests, trace_id)) == 2, timeout=10)
    on_time = recorded(otlp_grpc_sink.requests, trace_id)
    assert on_time == [({"sampling.policy": "half", "sampling.sample_rate": 2.0}, "ot=th:8")] * 2

    with client.tracer.start_as_current_span("late retry", context=remote_parent(trace_id)):
        pass
    await asyncio.to_thread(client.flush)
    await otlp_grpc_sink.wait_for(lambda: len(recorded(otlp_grpc_sink.requests, trace_id)) == 3, timeout=10)
    assert (await collector.stats())["spans"]["late"] == {"kept": 1}
    late = recorded(otlp_grpc_sink.requests, trace_id)[2]
    assert late == on_time[0], "the late span left without its trace's sampling facts"
    client.shutdown()
