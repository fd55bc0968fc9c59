"""TLS and mutual TLS on both OTLP receivers and the admin listener, with certificates made at
test time and the OpenTelemetry SDK's own exporters as clients; exporters' ``tls`` keys."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from cryptography import x509

from tailsampler.collector.config import ConfigError, parse_config
from tests.certs import CertificateAuthority, Issued
from tailsampler.loadgen.processes import free_port
from tests.collectors import REPO, AgentProcess, StartCollector, collector_config
from tests.otlp_data import new_trace_id, request
from tests.otlp_sink import GrpcSink, HttpSink, ServerTls as SinkTls
from tests.sdk import ClientTls, SdkClient
from tests.waiting import eventually, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def tls_config(server: Issued, client_ca: Path | None = None, **extra: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"cert_file": str(server.cert), "key_file": str(server.key), **extra}
    if client_ca is not None:
        block["client_ca_file"] = str(client_ca)
    return block


async def start_tls_collector(start_collector: StartCollector, tmp_path: Path, tls: dict[str, Any], **admin: Any) -> Any:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    for receiver in ("grpc", "http"):
        config["receivers"]["otlp"][receiver]["tls"] = tls
    config["admin"].update(admin)
    return await start_collector(config)


def endpoint(collector: Any, transport: str) -> str:
    return f"localhost:{collector.grpc.port if transport == 'grpc' else collector.http.port}"


async def send_one_trace(client: SdkClient) -> bool:
    with client.tracer.start_as_current_span("GET /cart"):
        pass
    return await asyncio.to_thread(client.send_now)


async def received(collector: Any) -> int:
    return (await collector.stats())["spans"]["received"]


def served_serial(port: int, ca: Path, alpn: str) -> int:
    """The serial number of the certificate a listener presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_exports_over_tls(transport: str, start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path) -> None:
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(pki.server()))
    client = SdkClient(transport, endpoint(collector, transport), tls=ClientTls(pki.cert), batch=False, timeout=5)
    assert await send_one_trace(client)
    assert await received(collector) == 1


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_mutual_tls_takes_a_client_certificate_signed_by_the_client_ca_and_refuses_others(
    transport: str, start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(pki.server(), client_ca=pki.cert))
    where = endpoint(collector, transport)
    client_cert = pki.client()
    stranger = CertificateAuthority(tmp_path / "other-ca", "some other CA").client("stranger")

    trusted = SdkClient(transport, where, tls=ClientTls(pki.cert, client_cert.cert, client_cert.key), batch=False, timeout=5)
    assert await send_one_trace(trusted)
    assert await received(collector) == 1

    without_certificate = SdkClient(transport, where, tls=ClientTls(pki.cert), batch=False, timeout=2)
    assert not await send_one_trace(without_certificate)
    foreign = SdkClient(transport, where, tls=ClientTls(pki.cert, stranger.cert, stranger.key), batch=False, timeout=2)
    assert not await send_one_trace(foreign)
    assert await received(collector) == 1


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_plaintext_client_is_refused_by_a_tls_listener(
    transport: str, start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(pki.server()))
    plaintext = SdkClient(transport, endpoint(collector, transport), batch=False, timeout=2)
    assert not await send_one_trace(plaintext)
    assert await received(collector) == 0
    assert await send_one_trace(SdkClient(transport, endpoint(collector, transport), tls=ClientTls(pki.cert), batch=False, timeout=5))


@pytest.mark.parametrize(("transport", "alpn"), [("grpc", "h2"), ("http", "http/1.1")])
async def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    transport: str, alpn: str, start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    server = pki.server()
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(server, reload_interval="100ms"))
    port = collector.grpc.port if transport == "grpc" else collector.http.port
    first = server.serial
    assert await asyncio.to_thread(served_serial, port, pki.cert, alpn) == first

    rotated = pki.server()  # same files, new key and certificate
    assert rotated.serial != first

    async def serves_the_new_certificate() -> bool:
        return await asyncio.to_thread(served_serial, port, pki.cert, alpn) == rotated.serial

    await eventually(serves_the_new_certificate, timeout=10, message="the rotated certificate is served")
    client = SdkClient(transport, endpoint(collector, transport), tls=ClientTls(pki.cert), batch=False, timeout=5)
    assert await send_one_trace(client)


async def test_a_pair_that_does_not_load_keeps_the_current_certificate(
    start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = pki.server()
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(server, reload_interval="50ms"))
    first = server.serial
    server.cert.write_text("not a certificate\n")  # a rotation caught halfway

    for receiver, port, alpn in (("http", collector.http.port, "http/1.1"), ("grpc", collector.grpc.port, "h2")):
        async def tried_and_kept() -> bool:
            assert await asyncio.to_thread(served_serial, port, pki.cert, alpn) == first
            return f"receivers.otlp.{receiver}.tls: keeping the current certificate" in caplog.text

        await eventually(tried_and_kept, timeout=10, message=f"{receiver} tried the broken pair and kept its certificate")


async def test_min_version_refuses_older_clients(start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    config["receivers"]["otlp"]["http"]["tls"] = tls_config(pki.server(), min_version="1.3")
    collector = await start_collector(config)

    def handshake(maximum: ssl.TLSVersion) -> str:
        context = ssl.create_default_context(cafile=str(pki.cert))
        context.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", collector.http.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return str(tls.version())

    assert await asyncio.to_thread(handshake, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(handshake, ssl.TLSVersion.TLSv1_2)


async def test_grpc_cannot_be_told_to_require_tls_1_3(pki: CertificateAuthority) -> None:
    tls = {"cert_file": "s.pem", "key_file": "s-key.pem", "min_version": "1.3"}
    with pytest.raises(ConfigError, match=r"receivers.otlp.grpc.tls.min_version: grpcio cannot"):
        parse_config(f"receivers: {{otlp: {{grpc: {{tls: {tls}}}}}}}", "x.yaml")


async def test_admin_listener_over_tls(start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path) -> None:
    config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
    config["admin"]["tls"] = tls_config(pki.server())
    collector = await start_collector(config)
    context = ssl.create_default_context(cafile=str(pki.cert))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://localhost:{collector.admin.port}/health", ssl=context) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://localhost:{collector.admin.port}/health") as response:
                await response.read()


async def test_a_missing_certificate_file_stops_the_start_naming_the_key(
    start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    server = pki.server()
    server.key.unlink()
    with pytest.raises(OSError, match=r"receivers.otlp.grpc.tls.key_file '.*server-key.pem': No such file"):
        await start_tls_collector(start_collector, tmp_path, tls_config(server))


async def test_raw_grpc_client_without_a_certificate_gets_unavailable_not_a_hang(
    start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    collector = await start_tls_collector(start_collector, tmp_path, tls_config(pki.server(), client_ca=pki.cert))
    credentials = grpc.ssl_channel_credentials(pki.cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{collector.grpc.port}", credentials) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request(new_trace_id()).SerializeToString(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await received(collector) == 0


# --- exporters: the Collector's configtls client keys --------------------------------------


def backend_tls(pki: CertificateAuthority, name: str) -> SinkTls:
    """A sink certificate for ``name`` only, trusting client certificates signed by the CA."""
    server = pki.server(name, hosts=(name,))
    return SinkTls(server.cert, server.key, client_ca=pki.cert)


async def test_exporters_tls_block_with_server_name_override(
    start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    sink_tls = backend_tls(pki, "backend.internal")
    grpc_sink, http_sink = GrpcSink(sink_tls), HttpSink(sink_tls)
    await grpc_sink.start()
    await http_sink.start()
    client = pki.client("collector")
    block = {"ca_file": str(pki.cert), "cert_file": str(client.cert), "key_file": str(client.key),
             "server_name_override": "backend.internal"}
    try:
        collector = await start_collector(collector_config(
            [
                {"type": "otlp", "endpoint": f"127.0.0.1:{grpc_sink.port}", "tls": block},
                {"type": "otlphttp", "endpoint": f"https://127.0.0.1:{http_sink.port}", "tls": block},
            ],
            tail_sampling={"decision_wait": "200ms", "policies": [{"name": "all", "type": "always_sample"}]},
        ))
        sdk = SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}", batch=False)
        assert await send_one_trace(sdk)
        await eventually(lambda: grpc_sink.requests and http_sink.requests, timeout=10, message="delivered to both over TLS")
    finally:
        await grpc_sink.stop()
        await http_sink.stop()


async def test_otlphttp_insecure_skip_verify_accepts_an_untrusted_certificate(
    start_collector: StartCollector, pki: CertificateAuthority, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path / "unknown-ca", "a CA nobody trusts")
    sink_tls = backend_tls(stranger, "somewhere.else")
    http_sink = HttpSink(SinkTls(sink_tls.cert, sink_tls.key, client_ca=pki.cert))
    await http_sink.start()
    client = pki.client("collector")
    try:
        collector = await start_collector(collector_config(
            [{"type": "otlphttp", "endpoint": f"https://127.0.0.1:{http_sink.port}",
              "cert_file": str(client.cert), "key_file": str(client.key),
              "tls": {"insecure_skip_verify": True}}],
            tail_sampling={"decision_wait": "200ms", "policies": [{"name": "all", "type": "always_sample"}]},
        ))
        assert await send_one_trace(SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}", batch=False))
        await eventually(lambda: http_sink.requests, timeout=10, message="delivered without verification")
    finally:
        await http_sink.stop()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{type: otlp, ca_file: a.pem, tls: {ca_file: b.pem}}", "ca_file is given both at the top and in tls"),
        ("{type: otlp, tls: {insecure: true, ca_file: a.pem}}", "insecure: true cannot be combined with ca_file"),
        ("{type: otlp, tls: {insecure_skip_verify: true}}", "grpcio cannot skip certificate verification"),
        ("{type: otlphttp, tls: {insecure: true}}", "the URL's scheme decides"),
        ("{type: otlp, tls: {cert_file: c.pem}}", "cert_file and key_file must be given together"),
        ("{type: otlp, tls: {verify: false}}", "unknown field `verify`"),
    ],
)
def test_exporter_tls_problems(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"exporters:\n  - {entry}\n", "x.yaml")
    assert message in str(caught.value)


def test_flat_exporter_tls_keys_still_work_and_fold_into_tls() -> None:
    [grpc_spec, http_spec] = parse_config(
        "exporters: [{type: otlp, endpoint: 'a:1', insecure: true}, "
        "{type: otlphttp, endpoint: 'https://b', ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}]\n"
        "tail_sampling: {policies: [{name: all, type: always_sample}]}",
        "x.yaml",
    ).exporters
    assert grpc_spec.insecure and grpc_spec.tls.insecure
    assert (http_spec.tls.ca_file, http_spec.tls.cert_file, http_spec.tls.key_file) == ("ca.pem", "c.pem", "k.pem")


# --- examples/secure.yaml, as a real process -------------------------------------------------


class SecureAgent(AgentProcess):
    """An agent whose admin API speaks TLS and wants a token: readiness and stats go through both."""

    def __init__(self, config: dict[str, Any], workdir: Path, ca: Path, token: str) -> None:
        super().__init__(config, workdir)
        self._context = ssl.create_default_context(cafile=str(ca))
        self._token = token

    def admin_get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self._token if token is None else token}"}
        url = f"https://{self.admin_endpoint}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=self._context) as response:
                status, body, kind = response.status, response.read(), response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, exc.read(), exc.headers.get_content_type()
        return status, json.loads(body or b"null") if kind == "application/json" else body.decode()


def test_the_secure_example_runs_with_tls_and_tokens_from_the_environment(
    tmp_path: Path, pki: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((REPO / "examples" / "secure.yaml").read_text())
    otlp = config["receivers"]["otlp"]
    otlp["grpc"]["endpoint"] = f"localhost:{free_port()}"
    otlp["http"]["endpoint"] = f"localhost:{free_port()}"
    config["admin"]["endpoint"] = f"localhost:{free_port()}"
    config["exporters"] = [{"type": "sqlite", "path": str(tmp_path / "kept.db")}]
    pki.server()  # server.pem and server-key.pem, where TAILSAMPLER_CERTS says
    token, admin_token = "application-token", "admin-token"
    monkeypatch.setenv("TAILSAMPLER_CERTS", str(pki.directory))
    monkeypatch.setenv("TAILSAMPLER_TOKEN", token)
    monkeypatch.setenv("TAILSAMPLER_ADMIN_TOKEN", admin_token)

    agent = SecureAgent(config, tmp_path / "agent", pki.cert, admin_token)
    try:
        agent.start()
        for transport, where in (("grpc", agent.grpc_endpoint), ("http", agent.http_endpoint)):
            for header, accepted in ((f"Bearer {token}", True), (f"Bearer {admin_token}", False)):
                client = SdkClient(transport, where, tls=ClientTls(pki.cert), headers={"authorization": header},
                                   batch=False, timeout=3)
                with client.tracer.start_as_current_span("GET /cart"):
                    pass
                assert client.send_now() is accepted, (transport, header)
        wait_until(lambda: agent.stats()["spans"]["received"] == 2, timeout=10, message="both transports delivered")
        assert agent.admin_get("/api/v1/stats", token="")[0] == 401
        assert agent.admin_get("/metrics")[0] == 200  # protect_metrics: true, with the token
        assert admin_token not in agent.log() and token not in agent.log()
    finally:
        agent.stop()
