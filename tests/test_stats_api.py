"""The admin API against its OpenAPI description: real responses of a real collector fed by the
OpenTelemetry SDK, each validated against the schema the document gives for it."""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from opentelemetry.trace import Status, StatusCode

from tailsampler.collector.app import Collector
from tests.collectors import StartCollector, collector_config
from tests.sdk import SdkClient
from tests.waiting import eventually

SPEC = json.loads(resources.files("tailsampler.collector.console").joinpath("openapi.json").read_text())
POLICIES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 60_000}},
]


def conforms(body: Any, schema: str) -> Any:
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]})
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not problems, f"response does not match {schema}:\n" + "\n".join(problems[:20])
    return body


def documented(path: str, method: str, status: int) -> str:
    """The schema name the document gives for a path's answer with ``status``."""
    answer = SPEC["paths"][path][method]["responses"][str(status)]
    return answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


async def call(collector: Collector, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://127.0.0.1:{collector.admin.port}{path}", **kwargs) as response:
            return response.status, await response.json(content_type=None)


def send(client: SdkClient, count: int, service_errors: int) -> None:
    """``count`` two-span traces; every ``service_errors``-th one fails in its child span."""
    for i in range(count):
        with client.tracer.start_as_current_span(f"GET /item/{i}"):
            with client.tracer.start_as_current_span("SELECT items") as child:
                child.set_attribute("db.system", "postgresql")
                if i % service_errors == 0:
                    child.set_status(Status(StatusCode.ERROR, "deadlock"))


async def decided(collector: Collector, traces: int) -> None:
    async def all_decided() -> bool:
        stats = await collector.stats()
        return stats["traces"]["kept"] + stats["traces"]["dropped"] == traces and not collector.loop._settling

    await eventually(all_decided, timeout=20, message=f"{traces} traces decided")


async def test_stats_over_a_window_by_service_and_policy(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        tail_sampling={"decision_wait": "300ms", "policies": POLICIES},
    ))
    checkout, search = (SdkClient("grpc", f"127.0.0.1:{collector.grpc.port}", service=s) for s in ("checkout", "search"))
    try:
        send(checkout, 12, service_errors=3)
        send(search, 10, service_errors=5)
        await asyncio.gather(asyncio.to_thread(checkout.flush), asyncio.to_thread(search.flush))
        await decided(collector, 22)
    finally:
        await asyncio.gather(asyncio.to_thread(checkout.shutdown), asyncio.to_thread(search.shutdown))

    status, stats = await call(collector, "GET", "/api/v1/stats?window=5m&by=service,policy&series=true")
    assert status == 200
    conforms(stats, documented("/api/v1/stats", "get", 200))
    window = stats["window"]
    assert window["spans"]["received"] == stats["spans"]["received"] == 44  # everything happened within the window
    assert (window["traces"]["kept"], window["traces"]["dropped"]) == (6, 16)
    assert window["by_service"]["checkout"] == {"traces": 12, "kept": 4, "dropped": 8, "keep_percent": pytest.approx(33.333), "spans_kept": 8}
    assert window["by_service"]["search"]["kept"] == 2 and window["by_service"]["search"]["traces"] == 10
    assert window["by_policy"]["errors"] == {"kept": 6, "dropped": 0, "votes": {"sampled": 6, "not_sampled": 16}}
    assert window["storage_reduction_percent"] == pytest.approx(100 * 16 / 22, abs=0.001)
    assert window["bytes"]["received"] > window["bytes"]["kept"] > 0
    assert sum(window["series"]["spans_received"]) == 44
    assert sum(sum(v) for v in window["series"]["kept_by_policy"].values()) == 6
    assert stats["agent"]["exporters"]["sqlite"]["circuit"] == "closed"

    plain = conforms((await call(collector, "GET", "/api/v1/stats"))[1], "Stats")
    assert "window" not in plain and plain["traces"]["kept"] == 6

    for query, parameter in (("window=5parsecs", "window"), ("window=5m&by=colour", "by"), ("by=service", "window")):
        status, body = await call(collector, "GET", f"/api/v1/stats?{query}")
        assert status == 400 and parameter in conforms(body, documented("/api/v1/stats", "get", 400))["error"]


async def test_traces_policies_and_what_if_match_the_document(start_collector: StartCollector, tmp_path: Path) -> None:
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        tail_sampling={"decision_wait": "300ms", "policies": [*POLICIES, {"name": "a-few", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}}]},
    ))
    client = SdkClient("http", f"127.0.0.1:{collector.http.port}")
    try:
        send(client, 20, service_errors=4)
        await asyncio.to_thread(client.flush)
        await decided(collector, 20)
    finally:
        await asyncio.to_thread(client.shutdown)
    kept = (await collector.stats())["traces"]["kept"]

    listing = conforms((await call(collector, "GET", "/api/v1/traces?errors=true&service=checkout&min_duration_ms=0"))[1], "TraceList")
    assert len(listing["traces"]) == 5 and all(t["error"] and t["policy"] == "errors" for t in listing["traces"])
    assert listing["traces"][0]["votes"]["errors"] == "sampled" and set(listing["traces"][0]["votes"]) == {"errors", "slow", "a-few"}
    assert (await call(collector, "GET", "/api/v1/traces?min_duration_ms=60000"))[1] == {"traces": []}
    one = conforms((await call(collector, "GET", f"/api/v1/traces/{listing['traces'][0]['trace_id']}"))[1], "Trace")
    assert sum(len(ss["spans"]) for rs in one["otlp"]["resourceSpans"] for ss in rs["scopeSpans"]) == 2

    policies = conforms((await call(collector, "GET", "/api/v1/policies"))[1], documented("/api/v1/policies", "get", 200))
    assert [p["name"] for p in policies["policies"]] == ["errors", "slow", "a-few"] and policies["trace_store"]

    errors_only = "policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n"
    status, answer = await call(collector, "POST", "/api/v1/policies/what-if", json={"policies": errors_only, "traces": 100})
    assert status == 200
    conforms(answer, documented("/api/v1/policies/what-if", "post", 200))
    assert (answer["traces"], answer["kept"], answer["dropped"]) == (kept, 5, kept - 5)
    assert answer["by_policy"]["errors"]["kept"] == 5 and answer["policies"] == ["errors"]
    assert all(r["votes"] == {"errors": "sampled" if r["error"] else "not_sampled"} for r in answer["results"])

    broken = "- {name: slow, type: latency, latency: {threshold_ms: soon}}\n- {name: x, type: no_such_type}\n"
    status, answer = await call(collector, "POST", "/api/v1/policies/what-if", json={"policies": broken})
    assert status == 400
    paths = {p["path"] for p in conforms(answer, documented("/api/v1/policies/what-if", "post", 400))["problems"]}
    assert "tail_sampling.policies[0].latency.threshold_ms" in paths and any(p.startswith("tail_sampling.policies[1]") for p in paths)
    assert (await collector.stats())["traces"]["kept"] == kept, "the what-if changes nothing in the collector"

    spec_status, served = await call(collector, "GET", "/api/v1/openapi.json")
    assert spec_status == 200 and served == SPEC


async def test_the_fleets_window_adds_up_every_agent(start_collector: StartCollector, clean_redis_url: str, tmp_path: Path) -> None:
    buffer = {"type": "redis", "url": clean_redis_url, "timeout": "2s"}
    agents = [
        await start_collector(collector_config(
            [{"type": "file", "path": str(tmp_path / f"kept{i}.jsonl")}],
            tail_sampling={"decision_wait": "300ms", "policies": POLICIES}, buffer=buffer,
        ))
        for i in range(2)
    ]
    clients = [SdkClient("grpc", f"127.0.0.1:{agent.grpc.port}", service=f"svc{i}") for i, agent in enumerate(agents)]
    try:
        send(clients[0], 8, service_errors=2)
        send(clients[1], 6, service_errors=3)
        await asyncio.gather(*(asyncio.to_thread(client.flush) for client in clients))

        async def fleet_sees_everything() -> dict[str, Any] | None:
            status, stats = await call(agents[1], "GET", "/api/v1/stats?window=1m&by=service")
            fleet = stats.get("fleet", {})
            window = fleet.get("window", {})
            done = fleet.get("agents") == 2 and window["traces"]["kept"] + window["traces"]["dropped"] == 14
            done = done and window["spans"]["received"] == 28  # each agent publishes every 2 s
            return stats if done else None

        stats = await eventually(fleet_sees_everything, timeout=20, message="the fleet's window counts every trace")
    finally:
        await asyncio.gather(*(asyncio.to_thread(client.shutdown) for client in clients))
    conforms(stats, "Stats")
    fleet = stats["fleet"]
    assert fleet["window"]["spans"]["received"] == 28 and fleet["window"]["traces"]["kept"] == 6
    assert {s: v["kept"] for s, v in fleet["window"]["by_service"].items()} == {"svc0": 4, "svc1": 2}
    assert sorted(m["admin"] for m in fleet["members"]) == sorted(f"127.0.0.1:{a.admin.port}" for a in agents)
    assert sum(m["window"]["rates"]["spans_received"] for m in fleet["members"]) == pytest.approx(
        fleet["window"]["rates"]["spans_received"], rel=0.2)
