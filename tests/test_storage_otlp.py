"""The OTLP exporters against real gRPC and HTTP receivers: bytes on the wire, retries, refusals,
the circuit breaker and the retry budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from tailsampler.storage import ExporterSetupError
from tests.otlp_sink import GrpcSink, HttpSink, ServerTls, wait_for
from tests.storage_support import fast_retry, kept, metric, running, spec

EXPORTED = "tailsampler_exporter_traces_exported_total"
FAILED = "tailsampler_exporter_traces_failed_total"


def grpc_spec(sink: GrpcSink, **extra: object):
    defaults = {"type": "otlp", "endpoint": sink.endpoint, "insecure": True, "retry_on_failure": fast_retry()}
    return spec(**{**defaults, **extra})


async def test_grpc_sends_the_kept_bytes_unchanged_with_headers(otlp_grpc_sink: GrpcSink) -> None:
    registry = CollectorRegistry()
    traces = [kept(2), kept(3), kept(1)]
    async with running(grpc_spec(otlp_grpc_sink, headers={"X-Tenant": "blue"}), registry=registry) as [exporter]:
        for trace in traces:
            await exporter.submit(trace)
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.span_count() == 6, message="6 spans received")
    assert b"".join(otlp_grpc_sink.requests) == b"".join(t.data for t in traces)
    assert {h.get("x-tenant") for h in otlp_grpc_sink.headers} == {"blue"}
    assert metric(registry, EXPORTED, exporter="otlp") == 3
    assert metric(registry, "tailsampler_exporter_spans_exported_total", exporter="otlp") == 6


async def test_grpc_retries_unavailable_after_the_servers_retry_info(otlp_grpc_sink: GrpcSink) -> None:
    otlp_grpc_sink.fail("UNAVAILABLE", times=2, retry_after=0.3)
    trace = kept()
    started = time.monotonic()
    async with running(grpc_spec(otlp_grpc_sink)) as [exporter]:
        await exporter.submit(trace)
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.requests, message="delivered after retries")
    # backoff alone would be a few milliseconds: the two 0.3 s waits are the server's hint
    assert time.monotonic() - started >= 0.6
    assert otlp_grpc_sink.attempts == 3
    assert otlp_grpc_sink.requests == [trace.data]


@pytest.mark.parametrize("code, retry_after", [("INVALID_ARGUMENT", None), ("RESOURCE_EXHAUSTED", None)])
async def test_grpc_does_not_retry_permanent_errors(otlp_grpc_sink: GrpcSink, code: str, retry_after) -> None:
    registry = CollectorRegistry()
    otlp_grpc_sink.fail(code, times=1, retry_after=retry_after)
    async with running(grpc_spec(otlp_grpc_sink), registry=registry) as [exporter]:
        await exporter.submit(kept())
        await wait_for(lambda: metric(registry, FAILED, exporter="otlp", reason="rejected") == 1)
        second = kept()
        await exporter.submit(second)
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.requests, message="next trace delivered")
        assert exporter.health()[1]["circuit"] == "closed"
    assert otlp_grpc_sink.attempts == 2
    assert otlp_grpc_sink.requests == [second.data]


async def test_grpc_retries_resource_exhausted_only_with_retry_info(otlp_grpc_sink: GrpcSink) -> None:
    otlp_grpc_sink.fail("RESOURCE_EXHAUSTED", times=1, retry_after=0.01)
    async with running(grpc_spec(otlp_grpc_sink)) as [exporter]:
        await exporter.submit(kept())
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.requests, message="delivered after retry")
    assert otlp_grpc_sink.attempts == 2


async def test_grpc_partial_success_counts_rejections_without_retrying(otlp_grpc_sink: GrpcSink) -> None:
    registry = CollectorRegistry()
    otlp_grpc_sink.partial_success = (2, "2 spans too old")
    async with running(grpc_spec(otlp_grpc_sink), registry=registry) as [exporter]:
        await exporter.submit(kept(3))
        await wait_for(lambda: metric(registry, "tailsampler_exporter_rejected_spans_total", exporter="otlp") == 2)
    assert otlp_grpc_sink.attempts == 1
    assert metric(registry, EXPORTED, exporter="otlp") == 1


async def test_circuit_opens_holds_sends_back_then_recovers(otlp_grpc_sink: GrpcSink) -> None:
    registry = CollectorRegistry()
    otlp_grpc_sink.fail("UNAVAILABLE", times=3)
    exporter_spec = grpc_spec(otlp_grpc_sink, circuit_breaker={"failure_threshold": 2, "cooldown": "300ms"})
    async with running(exporter_spec, registry=registry) as [exporter]:
        await exporter.submit(kept())
        await wait_for(lambda: exporter.health()[1]["circuit"] == "open", message="circuit opened")
        assert exporter.health()[0] is False
        assert metric(registry, "tailsampler_exporter_circuit_state", exporter="otlp") == 2
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.requests, timeout=5, message="delivered after recovery")
        await wait_for(lambda: exporter.health()[1]["circuit"] == "closed", message="circuit closed by the probe")
        assert exporter.health()[0] is True
    # attempt 3 is the half-open probe (it fails and reopens), attempt 4 the probe that closes
    stamps = otlp_grpc_sink.attempt_times
    assert len(stamps) == 4
    assert stamps[2] - stamps[1] >= 0.29 and stamps[3] - stamps[2] >= 0.29
    assert metric(registry, "tailsampler_exporter_retries_total", exporter="otlp") == 3


async def test_an_open_circuit_holds_batches_instead_of_spending_the_retry_budget(otlp_grpc_sink: GrpcSink) -> None:
    """A backend that is down (circuit open) costs time, not data: with a budget of a single retry,
    every batch still arrives once the backend is back."""
    registry = CollectorRegistry()
    otlp_grpc_sink.fail("UNAVAILABLE", times=8)
    exporter_spec = grpc_spec(
        otlp_grpc_sink,
        retry_on_failure=fast_retry(budget_ratio=0.0, budget_min_retries=1),
        circuit_breaker={"failure_threshold": 2, "cooldown": "50ms"},
        batch_max_traces=1,
        num_consumers=2,
    )
    async with running(exporter_spec, registry=registry) as [exporter]:
        for _ in range(4):
            await exporter.submit(kept())
        await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.requests) == 4, timeout=10, message="all four delivered")
    assert metric(registry, FAILED, exporter="otlp", reason="retry_budget") == 0


async def test_retry_budget_caps_retries_against_a_dead_backend(otlp_grpc_sink: GrpcSink) -> None:
    registry = CollectorRegistry()
    otlp_grpc_sink.fail("UNAVAILABLE", times=100)
    exporter_spec = grpc_spec(
        otlp_grpc_sink,
        retry_on_failure=fast_retry(budget_ratio=0.5, budget_min_retries=1),
        circuit_breaker={"failure_threshold": 100},
        batch_max_traces=1,
        num_consumers=1,
    )
    async with running(exporter_spec, registry=registry) as [exporter]:
        for _ in range(4):
            await exporter.submit(kept())
        await wait_for(lambda: metric(registry, FAILED, exporter="otlp", reason="retry_budget") == 4)
    # 4 first attempts earn max(1, 0.5 * 4) = 2 retries in the window, not 4 x unlimited
    assert otlp_grpc_sink.attempts <= 4 + 2
    assert metric(registry, "tailsampler_exporter_retries_total", exporter="otlp") <= 2


async def test_full_queue_makes_submit_wait_and_nothing_is_lost(otlp_grpc_sink: GrpcSink) -> None:
    otlp_grpc_sink.fail("UNAVAILABLE", times=1000, retry_after=0.01)
    exporter_spec = grpc_spec(
        otlp_grpc_sink,
        queue_size=2,
        batch_max_traces=1,
        num_consumers=1,
        circuit_breaker={"failure_threshold": 1000},
        retry_on_failure=fast_retry(budget_min_retries=100000),
    )
    traces = [kept(1) for _ in range(4)]
    async with running(exporter_spec) as [exporter]:
        await exporter.submit(traces[0])
        await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.attempts >= 1, message="first send attempted")
        await exporter.submit(traces[1])
        await exporter.submit(traces[2])
        assert exporter.health()[1]["queue"] == 2
        blocked = asyncio.create_task(exporter.submit(traces[3]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done(), "submit must wait while the queue is full"
        otlp_grpc_sink.failures.clear()
        await wait_for(lambda: blocked.done(), message="submit resumed once the backend recovered")
        await otlp_grpc_sink.wait_for(lambda: len(otlp_grpc_sink.requests) == 4, message="all four delivered")
    assert sorted(otlp_grpc_sink.requests) == sorted(t.data for t in traces)


async def test_close_flushes_the_queue(otlp_grpc_sink: GrpcSink) -> None:
    traces = [kept(1) for _ in range(50)]
    async with running(grpc_spec(otlp_grpc_sink, batch_max_traces=7)) as [exporter]:
        for trace in traces:
            await exporter.submit(trace)
    assert len(otlp_grpc_sink.spans_by_trace()) == 50
    assert max(len(body) for body in otlp_grpc_sink.requests) <= 7 * max(len(t.data) for t in traces)
    with pytest.raises(RuntimeError, match="closed"):
        await exporter.submit(traces[0])


async def test_close_counts_what_it_could_not_deliver(otlp_grpc_sink: GrpcSink) -> None:
    registry = CollectorRegistry()
    otlp_grpc_sink.fail("UNAVAILABLE", times=1000, retry_after=0.01)
    exporter_spec = grpc_spec(
        otlp_grpc_sink,
        circuit_breaker={"failure_threshold": 1000},
        retry_on_failure=fast_retry(budget_min_retries=100000),
    )
    async with running(exporter_spec, registry=registry, close_timeout=0.2) as [exporter]:
        for _ in range(3):
            await exporter.submit(kept())
    assert metric(registry, FAILED, exporter="otlp", reason="shutdown") == 3


async def test_grpc_sink_receives_the_sdk_exporter(otlp_grpc_sink: GrpcSink) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp_grpc_sink.endpoint, insecure=True)))
    tracer = provider.get_tracer("tests")

    def emit() -> None:
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span("child"):
                pass
        provider.shutdown()

    await asyncio.to_thread(emit)
    await otlp_grpc_sink.wait_for(lambda: otlp_grpc_sink.span_count() == 2, message="SDK spans received")
    [spans] = otlp_grpc_sink.spans_by_trace().values()
    assert {span.name for span in spans} == {"parent", "child"}


def http_spec(sink: HttpSink, **extra: object):
    return spec(**{"type": "otlphttp", "endpoint": sink.endpoint, "retry_on_failure": fast_retry(), **extra})


@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_http_posts_the_kept_bytes(otlp_http_sink: HttpSink, compression: str) -> None:
    traces = [kept(2), kept(2)]
    exporter_spec = http_spec(otlp_http_sink, compression=compression, headers={"X-Tenant": "blue"})
    async with running(exporter_spec) as [exporter]:
        for trace in traces:
            await exporter.submit(trace)
        await otlp_http_sink.wait_for(lambda: otlp_http_sink.span_count() == 4, message="4 spans received")
    assert b"".join(otlp_http_sink.requests) == b"".join(t.data for t in traces)
    headers = otlp_http_sink.headers[0]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Tenant"] == "blue"
    assert headers.get("Content-Encoding") == ("gzip" if compression == "gzip" else None)


async def test_http_retries_503_after_retry_after(otlp_http_sink: HttpSink) -> None:
    otlp_http_sink.fail(503, times=1, retry_after=1)
    started = time.monotonic()
    async with running(http_spec(otlp_http_sink)) as [exporter]:
        await exporter.submit(kept())
        await otlp_http_sink.wait_for(lambda: otlp_http_sink.requests, message="delivered after 503")
    assert time.monotonic() - started >= 0.95
    assert otlp_http_sink.attempts == 2


async def test_http_does_not_retry_400(otlp_http_sink: HttpSink) -> None:
    registry = CollectorRegistry()
    otlp_http_sink.fail(400, times=1, message="span too large")
    async with running(http_spec(otlp_http_sink), registry=registry) as [exporter]:
        await exporter.submit(kept())
        await wait_for(lambda: metric(registry, FAILED, exporter="otlphttp", reason="rejected") == 1)
        assert "span too large" in str(exporter.health()[1]["last_error"])
    assert otlp_http_sink.attempts == 1


async def test_http_traces_endpoint_overrides_the_path(otlp_http_sink: HttpSink) -> None:
    url = f"{otlp_http_sink.endpoint}/v1/traces"
    async with running(spec(type="otlphttp", endpoint="http://127.0.0.1:1", traces_endpoint=url)) as [exporter]:
        await exporter.submit(kept())
        await otlp_http_sink.wait_for(lambda: otlp_http_sink.requests, message="delivered to traces_endpoint")


async def test_grpc_and_http_over_mutual_tls(tmp_path: Path) -> None:
    tls = ServerTls.create(tmp_path)
    files = {"ca_file": str(tls.cert), "cert_file": str(tls.cert), "key_file": str(tls.key)}
    grpc_sink, http_sink = GrpcSink(tls), HttpSink(tls)
    await grpc_sink.start()
    await http_sink.start()
    try:
        specs = [
            spec(type="otlp", endpoint=f"localhost:{grpc_sink.port}", **files),
            spec(type="otlphttp", endpoint=http_sink.endpoint, **files),
        ]
        trace = kept()
        async with running(*specs) as exporters:
            for exporter in exporters:
                await exporter.submit(trace)
            await wait_for(lambda: grpc_sink.requests and http_sink.requests, message="delivered over TLS")
        assert grpc_sink.requests == http_sink.requests == [trace.data]
    finally:
        await grpc_sink.stop()
        await http_sink.stop()


async def test_unreadable_tls_file_fails_at_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    with pytest.raises(ExporterSetupError, match=r"exporter otlp: ca_file '.*ca.pem': No such file"):
        async with running(spec(type="otlp", endpoint="localhost:4317", ca_file=missing)):
            pass
