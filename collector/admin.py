"""The admin listener: liveness, readiness per component, Prometheus metrics, sampling stats.

``/metrics`` reads the registry and nothing else: a scrape never reaches the buffer's store (the
buffer gauges are refreshed by the agent's own periodic task).

Readiness turns false as soon as shutdown starts, so a load balancer stops sending spans before
the receivers close.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tailsampler.collector.metrics import Metrics
from tailsampler.collector.stats import StatsQuery
from tailsampler.common.endpoints import Endpoint

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
StatsSource = Callable[[StatsQuery], Awaitable[dict[str, object]]]


class AdminServer:
    def __init__(
        self,
        endpoint: Endpoint,
        metrics: Metrics,
        readiness: Readiness,
        stats: StatsSource,
        extra_routes: list[web.RouteDef] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._metrics = metrics
        self._readiness = readiness
        self._stats = stats
        self._extra = extra_routes or []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/health/ready", self._ready),
                web.get("/metrics", self._metrics_page),
                web.get("/api/v1/stats", self._stats_page),
                *self._extra,
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._endpoint.listen_host, self._endpoint.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        ready, components = await self._readiness()
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "components": components},
            status=200 if ready else 503,
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _stats_page(self, request: web.Request) -> web.Response:
        try:
            query = StatsQuery.parse(request.query)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(await self._stats(query))
