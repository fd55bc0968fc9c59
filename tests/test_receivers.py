"""OTLP conformance of both receivers: what is accepted, refused, pushed back, and how it is said.

Every bad request is followed by a good one, to show the server keeps serving.
"""

from __future__ import annotations

import gzip
import time
import json
import zlib
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tailsampler.common.otlp_json import to_json
from tests.collectors import StartCollector, collector_config
from tests.waiting import eventually
from tests.otlp_data import new_trace_id, request

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
async def collector(start_collector: StartCollector, tmp_path: Any) -> Any:
    return await start_collector(collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}]))


async def grpc_export(port: int, body: bytes) -> ExportTraceServiceResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
        return await call(body, timeout=5)


async def http_export(port: int, body: bytes, content_type: str, **headers: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"http://127.0.0.1:{port}/v1/traces", data=body, headers={"Content-Type": content_type, **headers}
        )
        await response.read()
        return response


def with_invalid_ids(spans: int = 3) -> ExportTraceServiceRequest:
    req = request(new_trace_id(), spans)
    bad = req.resource_spans[0].scope_spans[0].spans
    bad[0].trace_id = bytes(16)
    bad[1].span_id = b"\x01\x02"
    return req


async def received(collector: Any) -> int:
    return (await collector.stats())["spans"]["received"]


async def test_grpc_refuses_invalid_ids_with_partial_success(collector: Any) -> None:
    response = await grpc_export(collector.grpc.port, with_invalid_ids(3).SerializeToString())
    assert response.partial_success.rejected_spans == 2
    assert "trace_id must be 16 bytes" in response.partial_success.error_message
    assert await received(collector) == 1


async def test_grpc_full_success_leaves_partial_success_unset(collector: Any) -> None:
    response = await grpc_export(collector.grpc.port, request(new_trace_id(), 4).SerializeToString())
    assert not response.HasField("partial_success")
    assert await received(collector) == 4


async def test_grpc_undecodable_body_is_invalid_argument_and_server_keeps_serving(collector: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_export(collector.grpc.port, b"\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())
    assert await received(collector) == 1


async def test_grpc_oversized_message_is_resource_exhausted(start_collector: StartCollector, tmp_path: Any) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "k.jsonl")}])
    config["receivers"]["otlp"]["grpc"]["max_recv_msg_size_mib"] = 0.01
    collector = await start_collector(config)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_export(collector.grpc.port, request(new_trace_id(), 200).SerializeToString())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
@pytest.mark.parametrize("gzipped", [False, True])
async def test_http_accepts_protobuf_and_json_plain_or_gzip_and_answers_in_kind(
    collector: Any, content_type: str, gzipped: bool
) -> None:
    req = request(new_trace_id(), 3)
    body = to_json(req) if content_type == "application/json" else req.SerializeToString()
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    response = await http_export(collector.http.port, gzip.compress(body) if gzipped else body, content_type, **headers)
    assert response.status == 200
    assert response.content_type == content_type
    assert await received(collector) == 3


async def test_http_json_hex_ids_are_decoded_and_invalid_ones_refused_in_json(collector: Any) -> None:
    req = with_invalid_ids(3)
    response = await http_export(collector.http.port, to_json(req), "application/json")
    assert response.status == 200
    answer = await response.json()
    assert answer["partialSuccess"]["rejectedSpans"] in ("2", 2)
    assert await received(collector) == 1
    # the one valid span was decoded with the trace ID the JSON named in hex
    valid_trace = req.resource_spans[0].scope_spans[0].spans[2].trace_id
    assert [c.trace_id for c in await collector.buffer.claim_due(time.time(), 10, draining=True)] == [valid_trace]


@pytest.mark.parametrize(
    ("content_type", "decode"),
    [
        ("application/x-protobuf", lambda body: status_pb2.Status.FromString(body)),
        ("application/json", json.loads),
    ],
)
async def test_http_undecodable_body_is_400_with_a_status_in_the_request_encoding(
    collector: Any, content_type: str, decode: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{collector.http.port}/v1/traces", data=b"\xff{not otlp", headers={"Content-Type": content_type}
        ) as response:
            assert response.status == 400
            assert response.content_type == content_type
            status = decode(await response.read())
    code = status.code if isinstance(status, status_pb2.Status) else status["code"]
    assert code == 3  # INVALID_ARGUMENT
    ok = await http_export(collector.http.port, request(new_trace_id()).SerializeToString(), "application/x-protobuf")
    assert ok.status == 200


async def test_http_unsupported_content_type_is_415(collector: Any) -> None:
    response = await http_export(collector.http.port, b"hello", "text/plain")
    assert response.status == 415


async def test_http_body_over_the_limit_after_decompression_is_413(start_collector: StartCollector, tmp_path: Any) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "k.jsonl")}])
    config["receivers"]["otlp"]["http"]["max_request_body_size_mib"] = 1
    collector = await start_collector(config)
    bomb = gzip.compress(b"\x00" * (3 * 1024 * 1024))  # small on the wire, 3 MiB inflated
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{collector.http.port}/v1/traces",
            data=bomb,
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        ) as response:
            assert response.status == 413
            assert status_pb2.Status.FromString(await response.read()).code == 8
    ok = await http_export(collector.http.port, request(new_trace_id()).SerializeToString(), "application/x-protobuf")
    assert ok.status == 200


async def test_full_buffer_with_backpressure_asks_both_transports_to_retry(
    start_collector: StartCollector, tmp_path: Any
) -> None:
    config = collector_config(
        [{"type": "file", "path": str(tmp_path / "k.jsonl")}],
        tail_sampling={"num_traces": 2, "decision_wait": "30s"},
        buffer={"overflow": "backpressure"},
    )
    collector = await start_collector(config)
    await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())
    await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(caught.value.trailing_metadata())["grpc-status-details-bin"]
    retry = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(retry)
    assert retry.retry_delay.seconds >= 1

    response = await http_export(collector.http.port, request(new_trace_id()).SerializeToString(), "application/x-protobuf")
    assert response.status == 503
    assert int(response.headers["Retry-After"]) >= 1

    stats = await collector.stats()
    assert stats["spans"]["refused"]["buffer_full"] == 2
    assert stats["buffer"]["traces"] == 2
    assert collector.metrics.registry.get_sample_value("tailsampler_overflow_refusals_total") == 2


async def test_full_buffer_with_decide_early_decides_the_oldest_and_counts_it(
    start_collector: StartCollector, tmp_path: Any
) -> None:
    config = collector_config(
        [{"type": "file", "path": str(tmp_path / "k.jsonl")}],
        tail_sampling={"num_traces": 2, "decision_wait": "30s"},
    )
    collector = await start_collector(config)
    for _ in range(5):
        await grpc_export(collector.grpc.port, request(new_trace_id(), 1).SerializeToString())

    async def three_decided_early() -> bool:
        stats = await collector.stats()
        return stats["traces"]["early"].get("overflow", 0) == 3 and stats["traces"]["dropped"] == 3

    await eventually(three_decided_early, timeout=10)
    assert (await collector.stats())["buffer"]["traces"] == 2


@pytest.mark.parametrize("body", [gzip.compress(b"x" * 100)[:-10], b"not gzip at all"])
async def test_http_corrupt_or_truncated_gzip_is_400_not_an_empty_request(collector: Any, body: bytes) -> None:
    response = await http_export(collector.http.port, body, "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert response.status == 400
    ok = await http_export(collector.http.port, request(new_trace_id()).SerializeToString(), "application/x-protobuf")
    assert ok.status == 200


async def test_http_accepts_deflate(collector: Any) -> None:
    body = zlib.compress(request(new_trace_id(), 2).SerializeToString())
    response = await http_export(collector.http.port, body, "application/x-protobuf", **{"Content-Encoding": "deflate"})
    assert response.status == 200
    assert await received(collector) == 2
