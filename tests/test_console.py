"""The console in a real browser, against a real collector fed by the OpenTelemetry SDK: the
overview shows what the API reports, a search finds a kept error trace, its waterfall shows every
span, the policies page replays kept traces, and nothing logs an error."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from tailsampler.collector.app import Collector
from tests.collectors import StartCollector, collector_config
from tests.sdk import SdkClient
from tests.waiting import eventually

POLICIES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 60_000}},
    {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 25}},
]


async def api(collector: Collector, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{collector.admin.port}{path}") as response:
            return await response.json()


def checkout_traffic(shop: SdkClient, payments: SdkClient, count: int) -> str:
    """``count`` orders of four spans over two services; the 3rd fails in its payment. Returns
    the failing trace's ID."""
    failing = ""
    for i in range(count):
        with shop.tracer.start_as_current_span("POST /checkout") as root:
            root.set_attribute("http.route", "/checkout")
            trace_id = f"{root.get_span_context().trace_id:032x}"
            with shop.tracer.start_as_current_span("reserve stock"):
                pass
            with shop.tracer.start_as_current_span("charge card") as charge:
                charge.set_attribute("payment.amount", 42.5)
                # the payment service's span, a child of the charge as a propagated context makes it
                with payments.tracer.start_as_current_span("INSERT payments", context=set_span_in_context(charge)) as insert:
                    insert.set_attribute("db.system", "postgresql")
                    if i == 2:
                        insert.set_status(Status(StatusCode.ERROR, "deadlock detected"))
                        failing = trace_id
    return failing


class Console:
    """One browser tab on the console, collecting every console error and uncaught exception."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("requestfailed", lambda request: self.errors.append(f"request failed: {request.url}"))

    async def open(self, fragment: str, ready: str) -> None:
        await self.page.goto(f"{self.base}/ui/{fragment}")
        await self.page.wait_for_selector(ready)

    async def text(self, testid: str) -> str:
        return (await self.page.locator(f"[data-testid={testid}]").inner_text()).strip()

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


async def test_the_console_shows_what_the_collector_kept(
    start_collector: StartCollector, browser: Any, screenshot_dir: Path, tmp_path: Path
) -> None:
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        tail_sampling={"decision_wait": "300ms", "policies": POLICIES},
    ))
    endpoint = f"127.0.0.1:{collector.grpc.port}"
    shop, payments = SdkClient("grpc", endpoint, service="shop"), SdkClient("grpc", endpoint, service="payments")
    try:
        failing = checkout_traffic(shop, payments, 24)
        await asyncio.gather(asyncio.to_thread(shop.flush), asyncio.to_thread(payments.flush))

        async def all_decided() -> bool:
            traces = (await collector.stats())["traces"]
            return traces["kept"] + traces["dropped"] == 24 and not collector.loop._settling

        await eventually(all_decided, timeout=20, message="24 traces decided and stored")
    finally:
        await asyncio.gather(asyncio.to_thread(shop.shutdown), asyncio.to_thread(payments.shutdown))
    reported = (await api(collector, "/api/v1/stats?window=1h&by=service"))["window"]

    page = await (await browser.new_context(viewport={"width": 1360, "height": 900})).new_page()
    console = Console(page, f"http://127.0.0.1:{collector.admin.port}", screenshot_dir)
    await console.open("", "[data-testid=traces-kept]")
    assert await console.text("spans-received") == str(reported["spans"]["received"]) == "96"
    assert await console.text("traces-kept") == str(reported["traces"]["kept"])
    assert await console.text("traces-dropped") == str(reported["traces"]["dropped"])
    assert await console.text("reduction") == f"{reported['storage_reduction_percent']:.1f}%".replace(".0%", "%")
    service_row = page.locator("[data-testid=services] tr[data-service=shop]")
    assert re.search(rf"shop\s+24\s+{reported['by_service']['shop']['kept']}\s", await service_row.inner_text())
    assert "closed" in await page.locator("[data-testid=agents] tr[data-agent]").first.inner_text()
    assert await page.locator("[data-testid=chart-kept] svg rect").count() >= 1
    await console.shot("overview")

    await console.open("#/traces", "[data-testid=result-count]")
    await page.select_option("select[name=policy]", "errors")
    await page.check("input[name=errors]")
    await page.fill("input[name=service]", "shop")
    await page.click("#search button[type=submit]")
    await page.wait_for_selector(f"[data-testid=results] tr[data-trace='{failing}']")
    assert await page.locator("[data-testid=results] tbody tr").count() == 1
    assert await console.text("result-count") == "1 kept trace(s), newest first"
    await console.shot("kept-traces")

    await page.click(f"[data-testid=results] a[href='#/trace/{failing}']")
    await page.wait_for_selector("[data-testid=waterfall] .span-row")
    rows = page.locator("[data-testid=waterfall] .span-row")
    assert await rows.count() == 4, "every span of the trace is on the waterfall"
    names = [(await rows.nth(i).locator(".name").inner_text()).strip() for i in range(4)]
    assert names == ["shop: POST /checkout", "shop: reserve stock", "shop: charge card", "payments: INSERT payments"]
    indents = [await rows.nth(i).locator(".name").get_attribute("style") for i in range(4)]
    assert indents == ["padding-left:0px", "padding-left:14px", "padding-left:14px", "padding-left:28px"], "nested by parent"
    error_rows = page.locator("[data-testid=waterfall] .span-row.error")
    assert await error_rows.count() == 1 and "INSERT payments" in await error_rows.inner_text()
    assert await console.text("kept-by") == "kept it"
    assert "errors" in await page.locator("[data-testid=votes] tr[data-policy=errors]").inner_text()
    assert "sampled" in await page.locator("[data-testid=votes] tr[data-policy=errors]").inner_text()
    assert await page.locator("[data-testid=votes] tbody tr").count() == 3, "every policy's vote"
    await error_rows.click()
    detail = await console.text("attributes")
    assert "db.system" in detail and "postgresql" in detail and "ERROR: deadlock detected" in detail
    await console.shot("trace-waterfall")

    await console.open("#/policies", "[data-testid=policy-votes] tr[data-policy=errors]")
    listed = page.locator("[data-testid=policy-list] li")
    assert [await listed.nth(i).get_attribute("data-policy") for i in range(3)] == ["errors", "slow", "baseline"]
    votes_row = await page.locator("[data-testid=policy-votes] tr[data-policy=errors]").inner_text()
    assert re.search(r"errors\s+1\s+0\s+1\s+23", votes_row), votes_row
    await page.fill("[data-testid=what-if-policies]", "policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n")
    await page.click("#what-if button[type=submit]")
    await page.wait_for_selector("[data-testid=what-if-headline]")
    kept = reported["traces"]["kept"]
    assert await console.text("what-if-headline") == f"Of the last {kept} kept traces, the edited list keeps 1 and drops {kept - 1}."
    await console.shot("policies-what-if")
    assert console.errors == [], console.errors
    await page.fill("[data-testid=what-if-policies]", "- {name: slow, type: latency, latency: {threshold_ms: soon}}\n")
    await page.click("#what-if button[type=submit]")
    await page.wait_for_selector("[data-testid=what-if-problems] li")
    assert "tail_sampling.policies[0].latency.threshold_ms" in await console.text("what-if-problems")
    assert (await collector.stats())["traces"]["kept"] == kept, "the what-if changed nothing"
    # the one error is the browser's note of the 400 that carried the problems
    assert console.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]


async def test_the_overview_lists_every_agent_of_the_fleet(
    start_collector: StartCollector, browser: Any, screenshot_dir: Path, clean_redis_url: str, tmp_path: Path
) -> None:
    buffer = {"type": "redis", "url": clean_redis_url, "timeout": "2s"}
    agents = [
        await start_collector(collector_config(
            [{"type": "sqlite", "path": str(tmp_path / f"kept{i}.db")}],
            tail_sampling={"decision_wait": "300ms", "policies": POLICIES}, buffer=buffer,
        ))
        for i in range(2)
    ]
    shop = SdkClient("grpc", f"127.0.0.1:{agents[0].grpc.port}", service="shop")
    payments = SdkClient("grpc", f"127.0.0.1:{agents[1].grpc.port}", service="payments")
    try:
        checkout_traffic(shop, payments, 10)
        await asyncio.gather(asyncio.to_thread(shop.flush), asyncio.to_thread(payments.flush))

        async def fleet_counted() -> bool:
            fleet = (await api(agents[0], "/api/v1/stats?window=1h")).get("fleet", {})
            return fleet.get("agents") == 2 and fleet["window"]["spans"]["received"] == 40 and (
                fleet["window"]["traces"]["kept"] + fleet["window"]["traces"]["dropped"] == 10)

        await eventually(fleet_counted, timeout=20, message="the fleet's stats count every span and trace")
    finally:
        await asyncio.gather(asyncio.to_thread(shop.shutdown), asyncio.to_thread(payments.shutdown))

    page = await (await browser.new_context(viewport={"width": 1360, "height": 900})).new_page()
    console = Console(page, f"http://127.0.0.1:{agents[0].admin.port}", screenshot_dir)
    await console.open("", "[data-testid=agents] tr[data-agent]")
    assert await console.text("agents-title") == "Agents of the fleet (2)"
    shown = {await row.get_attribute("data-agent") for row in await page.locator("[data-testid=agents] tr[data-agent]").all()}
    assert shown == {f"127.0.0.1:{agent.admin.port}" for agent in agents}
    assert await console.text("spans-received") == "40"
    await console.shot("overview-fleet")
    assert console.errors == [], console.errors


async def test_the_console_asks_once_for_the_bearer_token_the_api_requires(
    start_collector: StartCollector, browser: Any, screenshot_dir: Path, tmp_path: Path
) -> None:
    """The admin listener with a token: the console's pages load without it, the page asks for
    the token, refuses a wrong one, and sends the right one on every API call after."""
    store = str(tmp_path / "kept.db")
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": store}], tail_sampling={"policies": POLICIES},
        admin={"endpoint": "127.0.0.1:0", "auth": {"bearer_tokens": ["s3cret"]}},
    ))
    try:
        page = await (await browser.new_context(viewport={"width": 1360, "height": 900})).new_page()
        console = Console(page, f"http://127.0.0.1:{collector.admin.port}", screenshot_dir)
        await console.open("", "#login[open]")
        await page.fill("#token", "wrong")
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector("#login-error:not([hidden])")
        assert (await page.inner_text("#login-error")) == "That token was refused."
        await console.shot("login")
        await page.fill("#token", "s3cret")
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector("[data-testid=traces-kept]")
        await console.open("#/policies", "[data-testid=policy-list] li")  # a new page load: the token is kept for the tab
        assert await page.locator("#login[open]").count() == 0
        assert {e for e in console.errors} == {"Failed to load resource: the server responded with a status of 401 (Unauthorized)"}
    finally:
        await page.context.close()
