"""Each listener holds against hostile or overwhelming clients: connection caps and timeouts, the
in-flight bounds, OTLP/JSON of any shape, the admin API's Host check and query limits, a port
already in use, and memory at overload in a real ``serve`` process."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tailsampler.collector.receive.limits import InFlight
from tailsampler.common.otlp_json import JsonDecodeError, request_from_json, to_json
from tailsampler.storage.sqlite_store import open_writer, write_batch
from tests.collectors import REPO, StartCollector, collector_config
from tests.otlp_data import new_trace_id, request
from tests.storage_support import kept
from tests.waiting import eventually, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def config_with(tmp_path: Path, grpc_settings: dict[str, Any] | None = None, http_settings: dict[str, Any] | None = None,
                **sections: Any) -> dict[str, Any]:
    config = collector_config([{"type": "sqlite", "path": str(tmp_path / "kept.db")}], **sections)
    config["receivers"]["otlp"]["grpc"].update(grpc_settings or {})
    config["receivers"]["otlp"]["http"].update(http_settings or {})
    return config


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (what it sends first, such as
    an HTTP/2 server preface, is read and ignored)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


async def http_post(port: int, body: bytes, content_type: str = "application/x-protobuf", **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}/v1/traces", data=body, headers={"Content-Type": content_type, **headers}
        ) as response:
            return response.status, dict(response.headers), await response.read()


async def admin_get(port: int, path: str, host: str | None = None) -> int:
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
            await response.read()
            return response.status


# --- connections --------------------------------------------------------------------------


async def test_http_connections_past_the_cap_are_closed_logged_once_and_the_admin_keeps_answering(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    collector = await start_collector(config_with(tmp_path, http_settings={"max_connections": 20, "read_header_timeout": "30s"}))
    port = collector.http.port
    for _ in range(20):
        sockets.append(socket.create_connection(("127.0.0.1", port)))
    await eventually(lambda: collector.http.open_connections == 20, timeout=5, message="20 connections held open")

    extra = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", port))
        sockets.append(sock)
        extra.append(sock)
    for sock in extra:
        assert await asyncio.to_thread(closed_by_peer, sock), "a connection past max_connections is closed"
    assert await admin_get(collector.admin.port, "/health") == 200
    assert await admin_get(collector.admin.port, "/health/ready") == 200
    assert caplog.text.count("refusing new ones until some close") == 1

    for sock in sockets[:20]:
        sock.close()
    await eventually(lambda: collector.http.open_connections == 0, timeout=5, message="the held connections are gone")
    status, _, _ = await http_post(port, request(new_trace_id()).SerializeToString())
    assert status == 200


async def test_a_connection_that_sends_no_request_or_trickles_its_headers_is_closed_after_read_header_timeout(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    collector = await start_collector(config_with(tmp_path, http_settings={"read_header_timeout": "1s"}))
    silent = socket.create_connection(("127.0.0.1", collector.http.port))
    trickling = socket.create_connection(("127.0.0.1", collector.http.port))
    sockets += [silent, trickling]
    trickling.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")

    def trickle_until_closed() -> bool:
        trickling.settimeout(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                trickling.sendall(b"X")
                if trickling.recv(1) == b"":
                    return True
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return True
        return False

    assert await asyncio.to_thread(trickle_until_closed), "headers trickling in forever keep the connection"
    assert await asyncio.to_thread(closed_by_peer, silent, 10)


async def test_grpc_connections_past_the_cap_are_closed_at_once(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    collector = await start_collector(config_with(tmp_path, grpc_settings={"max_connections": 3, "handshake_timeout": "60s"}))
    port = collector.grpc.port
    sockets += [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", port))
    sockets.append(extra)
    assert await asyncio.to_thread(closed_by_peer, extra, 10), "the fourth connection is closed long before the handshake timeout"
    for sock in sockets:
        sock.close()

    async def served() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            try:
                await call(request(new_trace_id()).SerializeToString(), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            return True

    await eventually(served, timeout=15, message="new connections are taken once the held ones close")


async def test_grpc_a_connection_that_never_completes_its_handshake_is_closed(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    collector = await start_collector(config_with(tmp_path, grpc_settings={"handshake_timeout": "1s"}))
    silent = socket.create_connection(("127.0.0.1", collector.grpc.port))
    sockets.append(silent)
    assert await asyncio.to_thread(closed_by_peer, silent, 15)


# --- requests and bytes in flight ---------------------------------------------------------


def test_the_in_flight_budget_counts_requests_and_held_bytes_and_always_fits_one() -> None:
    budget = InFlight(max_requests=2, max_bytes=100)
    first = budget.admit(60)
    assert first is not None
    assert budget.admit(50) is None  # 60 + 50 > 100
    second = budget.admit(40)
    assert second is not None and (budget.requests, budget.bytes) == (2, 100)
    assert budget.admit() is None  # two requests already
    assert not second.hold(41) and budget.bytes == 100  # refused: holds what it held
    assert first.hold(10) and budget.bytes == 50
    first.release()
    first.release()  # twice is once
    second.release()
    assert (budget.requests, budget.bytes) == (0, 0)
    alone = budget.admit(500)  # larger than the budget, but alone: it fits, or it never would
    assert alone is not None and alone.hold(800)
    assert budget.admit(1) is None
    alone.release()


async def test_http_past_the_in_flight_bounds_gets_503_with_retry_after_before_its_body_is_read(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    collector = await start_collector(config_with(tmp_path, http_settings={"max_requests_in_flight": 1}))
    body = request(new_trace_id(), 5).SerializeToString()
    held = socket.create_connection(("127.0.0.1", collector.http.port))
    sockets.append(held)
    held.sendall(
        b"POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
    )
    await eventually(lambda: collector.http.in_flight.requests == 1, timeout=5, message="the first request is in flight")

    status, headers, answer = await http_post(collector.http.port, request(new_trace_id()).SerializeToString())
    assert status == 503 and headers["Retry-After"] == "1"
    assert status_pb2.Status.FromString(answer).code == 14  # UNAVAILABLE
    assert collector.metrics.registry.get_sample_value(
        "tailsampler_requests_total", {"transport": "http", "outcome": "in_flight_limit"}
    ) == 1

    held.sendall(body[10:])
    held.settimeout(5)
    assert (await asyncio.to_thread(held.recv, 100)).startswith(b"HTTP/1.1 200")  # the collector runs in this loop
    await eventually(lambda: collector.http.in_flight.requests == 0, timeout=5)
    assert (await http_post(collector.http.port, request(new_trace_id()).SerializeToString()))[0] == 200
    assert (await collector.stats())["spans"]["received"] == 6


async def test_http_a_declared_body_past_the_byte_budget_waits_for_others_to_finish(
    start_collector: StartCollector, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    collector = await start_collector(config_with(tmp_path, http_settings={"max_bytes_in_flight_mib": 0.001}))  # ~1 KiB
    body = request(new_trace_id(), 8).SerializeToString()
    assert 600 < len(body) < 1048
    held = socket.create_connection(("127.0.0.1", collector.http.port))
    sockets.append(held)
    held.sendall(
        b"POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    await eventually(lambda: collector.http.in_flight.bytes == len(body), timeout=5)
    status, headers, _ = await http_post(collector.http.port, body)
    assert status == 503 and headers["Retry-After"] == "1"
    held.sendall(body)
    held.settimeout(5)
    assert (await asyncio.to_thread(held.recv, 100)).startswith(b"HTTP/1.1 200")  # the collector runs in this loop


async def test_grpc_past_the_in_flight_bounds_gets_unavailable_with_retry_info(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(config_with(tmp_path, grpc_settings={"max_requests_in_flight": 1}))
    release = asyncio.Event()
    body = request(new_trace_id(), 3).SerializeToString()

    async def slow_body() -> AsyncIterator[bytes]:
        await release.wait()
        yield body

    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc.port}") as channel:
        streaming = channel.stream_unary(EXPORT, request_serializer=None, response_deserializer=None)
        unary = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        first = asyncio.ensure_future(streaming(slow_body(), timeout=10))
        await eventually(lambda: collector.grpc.in_flight.requests == 1, timeout=5, message="the first call is in flight")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(request(new_trace_id()).SerializeToString(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        details = dict(caught.value.trailing_metadata())["grpc-status-details-bin"]
        retry = error_details_pb2.RetryInfo()
        assert status_pb2.Status.FromString(details).details[0].Unpack(retry) and retry.retry_delay.seconds == 1
        release.set()
        await first
        await unary(request(new_trace_id()).SerializeToString(), timeout=5)
    assert (await collector.stats())["spans"]["received"] == 4


# --- OTLP/JSON of any shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceSpans":5}', "resourceSpans must be an array, got a number"),
        (b"[5]", "body must be a JSON object with a resourceSpans array, got an array"),
        (b'[{"scopeSpans":5}]', "body must be a JSON object"),
        (b'{"resourceSpans":[{"scopeSpans":5}]}', "resourceSpans[0].scopeSpans must be an array"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"links":5}]}]}]}', "resourceSpans[0].scopeSpans[0].spans[0].links must be an array"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"links":[5]}]}]}]}', "links[0] must be an object"),
        (b'{"resourceSpans":[null]}', "resourceSpans[0] must be an object, got null"),
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"a","value":'
         + b'{"arrayValue":{"values":[' * 1000 + b"]}}" * 1000 + b"}]}]}]}]}", "nested too deeply"),
    ],
)
async def test_hostile_json_is_a_400_saying_what_is_wrong(
    body: bytes, message: str, start_collector: StartCollector, tmp_path: Path
) -> None:
    collector = await start_collector(config_with(tmp_path))
    status, headers, answer = await http_post(collector.http.port, body, "application/json")
    assert status == 400
    assert message in json.loads(answer)["message"]
    ok = await http_post(collector.http.port, to_json(request(new_trace_id())), "application/json")
    assert ok[0] == 200


_REPLACEMENTS: list[Any] = [5, -1, 1e300, "x", "", True, None, [], {}, [5], [None], {"a": 5}, "ff" * 40]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def test_any_field_of_any_shape_decodes_or_is_refused_with_a_json_decode_error() -> None:
    req = request(new_trace_id(), 2)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    span.events.add(name="e").attributes.add(key="k").value.string_value = "v"
    span.attributes.add(key="n").value.array_value.values.add().int_value = 3
    sample = json.loads(to_json(req))
    tried = 0
    for path in _paths(sample):
        if not path:
            continue
        for replacement in _REPLACEMENTS:
            mutated = copy.deepcopy(sample)
            parent = mutated
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = replacement
            try:
                request_from_json(json.dumps(mutated).encode())
            except JsonDecodeError:
                pass
            tried += 1
    assert tried > 500


# --- the admin API -------------------------------------------------------------------------


async def test_admin_answers_only_to_its_own_names_and_ip_addresses(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(config_with(tmp_path))
    port = collector.admin.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"10.1.2.3:{port}",
                 f"{socket.gethostname()}:{port}", f"LOCALHOST.:{port}"):
        assert await admin_get(port, "/api/v1/stats", host) == 200, host
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert await admin_get(port, "/health", host) == 403, host


async def test_admin_allowed_hosts_adds_names_and_star_allows_any(start_collector: StartCollector, tmp_path: Path) -> None:
    named = await start_collector(config_with(tmp_path, admin={"endpoint": "127.0.0.1:0", "allowed_hosts": ["Collector.Example"]}))
    assert await admin_get(named.admin.port, "/health", "collector.example:13133") == 200
    assert await admin_get(named.admin.port, "/health", "other.example") == 403
    anything = await start_collector(config_with(tmp_path, admin={"endpoint": "127.0.0.1:0", "allowed_hosts": ["*"]}))
    assert await admin_get(anything.admin.port, "/health", "other.example") == 200


async def test_trace_queries_cap_limit_and_refuse_silly_since(start_collector: StartCollector, tmp_path: Path) -> None:
    db = tmp_path / "kept.db"
    connection = open_writer(str(db))
    now = time.time_ns()
    write_batch(connection, [kept(1, start=now) for _ in range(1005)], time.time())
    connection.close()
    collector = await start_collector(config_with(tmp_path))
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{collector.admin.port}/api/v1/traces"
        async with session.get(f"{base}?limit=100000") as response:
            assert response.status == 200
            assert len((await response.json())["traces"]) == 1000
        for query in ("limit=0", "limit=-5", "limit=ten", "since=inf", "since=nan", "since=1e300", "since=-1", "since=soon"):
            async with session.get(f"{base}?{query}") as response:
                assert response.status == 400, query
        async with session.get(f"{base}?since={time.time() - 3600:.0f}&limit=3") as response:
            assert response.status == 200 and len((await response.json())["traces"]) == 3


# --- error bodies and a port in use ---------------------------------------------------------


async def test_a_plain_text_client_gets_its_error_as_text(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(config_with(tmp_path))
    status, headers, body = await http_post(collector.http.port, b"hello", "text/plain")
    assert status == 415
    assert headers["Content-Type"].startswith("text/plain")
    assert b"unsupported content type 'text/plain'" in body


@pytest.mark.parametrize("listener", ["grpc", "http", "admin"])
def test_a_port_in_use_is_one_line_naming_the_address(listener: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = collector_config([{"type": "file", "path": str(tmp_path / "kept.jsonl")}])
        if listener == "admin":
            config["admin"]["endpoint"] = f"127.0.0.1:{port}"
        else:
            config["receivers"]["otlp"][listener]["endpoint"] = f"127.0.0.1:{port}"
        path = tmp_path / "config.yaml"
        path.write_text(json.dumps(config))
        result = subprocess.run(
            [sys.executable, "-m", "tailsampler.collector.cli", "serve", "--config", str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    name = {"grpc": "otlp/grpc", "http": "otlp/http", "admin": "admin"}[listener]
    assert result.returncode == 2
    assert (result.stdout + result.stderr).splitlines() == [
        f"tailsampler: cannot start: cannot listen for {name} on 127.0.0.1:{port}: Address already in use"
    ]


# --- memory at overload, in a real process ---------------------------------------------------

MIB = 1024 * 1024
BUFFER_MAX_BYTES = 8 * MIB
IN_FLIGHT_MIB = 8  # per OTLP listener
RSS_MULTIPLE = 4  # peak RSS above the warmed-up idle process stays within this many times the bounds
GRPC_CHANNELS, GRPC_SENDERS, HTTP_SENDERS = 8, 256, 128


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def big_request(spans: int = 2000, spans_per_trace: int = 20) -> bytes:
    """About 300 KiB: 100 traces of 20 spans."""
    req = request(new_trace_id(), 1)
    spans_field = req.resource_spans[0].scope_spans[0].spans
    template = spans_field[0]
    template.attributes.add(key="http.url").value.string_value = "https://shop.example/cart?" + "x" * 100
    trace_id = template.trace_id
    for index in range(1, spans):
        if index % spans_per_trace == 0:
            trace_id = new_trace_id()
        span = spans_field.add()
        span.CopyFrom(template)
        span.trace_id, span.span_id = trace_id, os.urandom(8)
    return req.SerializeToString()


async def warm_up(grpc_endpoint: str, body: bytes) -> None:
    """Steady traffic the agent keeps up with, so that the baseline holds what any working agent
    holds (parsers, pools, caches) and the overload's growth is what it adds."""
    async with grpc.aio.insecure_channel(grpc_endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for _ in range(100):
            await call(body, timeout=10)


async def overload(grpc_endpoint: str, http_endpoint: str, seconds: float) -> dict[str, int]:
    """Far more than one agent can take, over both transports: every sender tries again 10 ms
    after a refusal, so the listeners stay at their bounds the whole time."""
    bodies = [big_request() for _ in range(64)]
    outcomes = {"ok": 0, "refused": 0}
    deadline = time.monotonic() + seconds

    async def grpc_sender(channel: grpc.aio.Channel, index: int) -> None:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        while time.monotonic() < deadline:
            try:
                await call(bodies[index % len(bodies)], timeout=10)
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError:
                outcomes["refused"] += 1
                await asyncio.sleep(0.01)
            index += 7

    async def http_sender(session: aiohttp.ClientSession, index: int) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.post(f"http://{http_endpoint}/v1/traces", data=bodies[index % len(bodies)],
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    await response.read()
                    accepted = response.status == 200
            except aiohttp.ClientError:
                accepted = False
            outcomes["ok" if accepted else "refused"] += 1
            if not accepted:
                await asyncio.sleep(0.01)
            index += 5

    channels = [grpc.aio.insecure_channel(grpc_endpoint) for _ in range(GRPC_CHANNELS)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(
            *(grpc_sender(channels[i % GRPC_CHANNELS], i) for i in range(GRPC_SENDERS)),
            *(http_sender(session, i) for i in range(HTTP_SENDERS)),
        )
    for channel in channels:
        await channel.close()
    return outcomes


def test_memory_at_overload_stays_within_a_multiple_of_the_configured_bounds(agent_process: Any, tmp_path: Path) -> None:
    """The bounds: the buffer's max_bytes and each OTLP listener's bytes in flight. Without the
    in-flight bounds, requests pile up inside the servers and the process grows with the clients'
    concurrency instead (about twice as much again here, and without limit as clients are added)."""
    limits = {"max_bytes_in_flight_mib": IN_FLIGHT_MIB, "max_requests_in_flight": 32}
    config = collector_config(
        [{"type": "file", "path": str(tmp_path / "kept.jsonl")}],
        tail_sampling={"decision_wait": "2s", "num_traces": 1_000_000,
                       "decision_cache": {"sampled_cache_size": 10_000, "non_sampled_cache_size": 10_000}},
        buffer={"max_bytes": BUFFER_MAX_BYTES, "overflow": "decide_early"},
        ports=True,
    )
    config["receivers"]["otlp"]["grpc"].update(limits)
    config["receivers"]["otlp"]["http"].update(limits)
    agent = agent_process(config).start()
    assert agent.process is not None
    pid = agent.process.pid
    asyncio.run(warm_up(agent.grpc_endpoint, big_request()))
    wait_until(lambda: agent.stats()["buffer"]["traces"] == 0, timeout=20, message="the warm-up traffic is decided")
    idle, _ = rss(pid)

    outcomes = asyncio.run(overload(agent.grpc_endpoint, agent.http_endpoint, seconds=8))
    _, peak = rss(pid)
    assert agent.ready(), "the agent stayed up and ready"
    assert outcomes["ok"] > 0 and outcomes["refused"] > outcomes["ok"], f"the load was well above what the agent takes: {outcomes}"
    bounds = BUFFER_MAX_BYTES + 2 * IN_FLIGHT_MIB * MIB
    grew = peak - idle
    assert grew <= RSS_MULTIPLE * bounds, (
        f"peak RSS grew {grew / MIB:.0f} MiB over the idle {idle / MIB:.0f} MiB, more than {RSS_MULTIPLE} x "
        f"the {bounds / MIB:.0f} MiB of configured bounds ({outcomes})"
    )
