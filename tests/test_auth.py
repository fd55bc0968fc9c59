"""Bearer tokens on the OTLP receivers and the admin API: the OpenTelemetry SDK's exporters with
and without the right token, tokens from the environment and from a file that changes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import status_pb2

from tests.collectors import REPO, StartCollector, collector_config
from tests.otlp_data import new_trace_id, request
from tests.sdk import SdkClient
from tests.waiting import eventually, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "s3cr3t-token-for-tests"


def auth_config(tmp_path: Path, **auth: Any) -> dict[str, Any]:
    config = collector_config([{"type": "sqlite", "path": str(tmp_path / "kept.db")}])
    config["receivers"]["otlp"]["auth"] = auth or {"bearer_tokens": [TOKEN]}
    return config


def endpoint(collector: Any, transport: str) -> str:
    return f"127.0.0.1:{collector.grpc.port if transport == 'grpc' else collector.http.port}"


async def send(collector: Any, transport: str, headers: dict[str, str] | None) -> bool:
    client = SdkClient(transport, endpoint(collector, transport), headers=headers, batch=False, timeout=3)
    with client.tracer.start_as_current_span("GET /cart"):
        pass
    return await asyncio.to_thread(client.send_now)


def unauthenticated(collector: Any, transport: str) -> float:
    value = collector.metrics.registry.get_sample_value(
        "tailsampler_requests_total", {"transport": transport, "outcome": "unauthenticated"}
    )
    return value or 0.0


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_only_a_request_with_a_configured_token_is_buffered(
    transport: str, start_collector: StartCollector, tmp_path: Path
) -> None:
    collector = await start_collector(auth_config(tmp_path, bearer_tokens=["other-token", TOKEN]))
    assert not await send(collector, transport, None)
    assert not await send(collector, transport, {"authorization": "Bearer wrong"})
    assert not await send(collector, transport, {"authorization": f"Basic {TOKEN}"})
    stats = await collector.stats()
    assert stats["spans"]["received"] == 0 and stats["buffer"]["traces"] == 0
    assert unauthenticated(collector, transport) == 3

    assert await send(collector, transport, {"authorization": f"Bearer {TOKEN}"})
    assert await send(collector, transport, {"authorization": "bearer other-token"})
    assert (await collector.stats())["spans"]["received"] == 2


async def test_grpc_refusal_is_unauthenticated(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(auth_config(tmp_path))
    async with grpc.aio.insecure_channel(endpoint(collector, "grpc")) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request(new_trace_id()).SerializeToString(), metadata=(("authorization", "Bearer nope"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "nope" not in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("content_type", "decode"),
    [
        ("application/x-protobuf", lambda body: status_pb2.Status.FromString(body).code),
        ("application/json", lambda body: json.loads(body)["code"]),
        ("text/plain", lambda body: body.decode()),
    ],
)
async def test_http_refusal_is_401_with_a_status_in_the_request_encoding(
    content_type: str, decode: Any, start_collector: StartCollector, tmp_path: Path
) -> None:
    collector = await start_collector(auth_config(tmp_path))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{endpoint(collector, 'http')}/v1/traces",
            data=request(new_trace_id()).SerializeToString(),
            headers={"Content-Type": content_type},
        ) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.content_type == content_type
            decoded = decode(await response.read())
    if content_type == "text/plain":
        assert "bearer token" in decoded
    else:
        assert decoded == 16  # UNAUTHENTICATED


async def test_a_changed_token_file_is_used_without_a_restart(start_collector: StartCollector, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n\n")
    collector = await start_collector(auth_config(tmp_path, bearer_tokens_file=str(tokens)))
    assert await send(collector, "http", {"authorization": "Bearer first-token"})

    tokens.write_text("second-token\nthird-token\n")

    async def rotated() -> bool:
        return await send(collector, "grpc", {"authorization": "Bearer second-token"})

    await eventually(rotated, timeout=10, message="the new token file is read")
    assert await send(collector, "http", {"authorization": "Bearer third-token"})
    assert not await send(collector, "http", {"authorization": "Bearer first-token"})


async def test_a_token_file_that_disappears_keeps_the_tokens_in_use(
    start_collector: StartCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("kept-token\n")
    collector = await start_collector(auth_config(tmp_path, bearer_tokens_file=str(tokens)))
    tokens.unlink()

    async def noticed() -> bool:
        assert await send(collector, "http", {"authorization": "Bearer kept-token"})
        return "keeping the tokens in use" in caplog.text

    await eventually(noticed, timeout=10, message="the vanished file is noticed and the tokens kept")
    assert caplog.text.count("keeping the tokens in use") == 1  # once, not every second


def test_a_token_from_the_environment_in_a_real_process_never_reaches_the_log(
    agent_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILSAMPLER_TEST_TOKEN", TOKEN)
    config = collector_config([{"type": "sqlite", "path": str(tmp_path / "kept.db")}], ports=True)
    config["receivers"]["otlp"]["auth"] = {"bearer_tokens": ["${env:TAILSAMPLER_TEST_TOKEN}"]}
    config["service"]["log_level"] = "debug"
    agent = agent_process(config).start()
    for transport, where in (("grpc", agent.grpc_endpoint), ("http", agent.http_endpoint)):
        for headers, accepted in (({"authorization": f"Bearer {TOKEN}"}, True), ({"authorization": "Bearer guess"}, False)):
            client = SdkClient(transport, where, headers=headers, batch=False, timeout=3)
            with client.tracer.start_as_current_span("GET /cart"):
                pass
            assert client.send_now() is accepted
    wait_until(lambda: agent.stats()["spans"]["received"] == 2, timeout=10)
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    assert TOKEN not in agent.log()


# --- the admin API ------------------------------------------------------------------------


async def admin_status(collector: Any, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{collector.admin.port}{path}", headers=headers) as response:
            await response.read()
            return response.status


@pytest.mark.parametrize("protect_metrics", [True, False])
async def test_admin_token_guards_everything_but_the_health_checks(
    protect_metrics: bool, start_collector: StartCollector, tmp_path: Path
) -> None:
    config = collector_config([{"type": "sqlite", "path": str(tmp_path / "kept.db")}])
    config["admin"]["auth"] = {"bearer_tokens": ["admin-token"], "protect_metrics": protect_metrics}
    collector = await start_collector(config)
    for path in ("/health", "/health/ready"):
        assert await admin_status(collector, path) == 200
    for path in ("/api/v1/stats", "/api/v1/traces"):
        assert await admin_status(collector, path) == 401
        assert await admin_status(collector, path, "wrong") == 401
        assert await admin_status(collector, path, "admin-token") == 200
    assert await admin_status(collector, "/metrics") == (401 if protect_metrics else 200)
    assert await admin_status(collector, "/metrics", "admin-token") == 200


def test_admin_token_from_a_file_in_a_real_process(agent_process: Any, tmp_path: Path) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text("from-a-file\n")
    config = collector_config([{"type": "sqlite", "path": str(tmp_path / "kept.db")}], ports=True)
    config["admin"]["auth"] = {"bearer_tokens": [f"${{file:{secret}}}"]}
    agent = agent_process(config).start()  # readiness needs no token
    url = f"http://{agent.admin_endpoint}/api/v1/stats"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    assert caught.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer from-a-file"}), timeout=5) as ok:
        assert json.load(ok)["spans"]["received"] == 0
    cli = [sys.executable, "-m", "tailsampler.collector.cli", "stats", "--admin", agent.admin_endpoint, "--json"]
    refused = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "TAILSAMPLER_ADMIN_TOKEN": ""})
    assert refused.returncode == 1 and "401" in refused.stderr
    allowed = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "TAILSAMPLER_ADMIN_TOKEN": "from-a-file"})
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["spans"]["received"] == 0
