"""The admin listener: liveness, readiness per component, Prometheus metrics, sampling stats.

``/metrics`` reads the registry and nothing else: a scrape never reaches the buffer's store (the
buffer gauges are refreshed by the agent's own periodic task).

Readiness turns false as soon as shutdown starts, so a load balancer stops sending spans before
the receivers close.

Every request's ``Host`` must be an IP address or one of the listener's names, so that a web page
a browser on this host opens cannot reach the API by rebinding its own name to 127.0.0.1. With
``admin.auth`` every path but the two health checks needs the bearer token, ``/metrics`` too
unless ``protect_metrics: false``: stats and the trace API carry span data.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tailsampler.collector.config import AdminConfig
from tailsampler.collector.metrics import Metrics
from tailsampler.collector.receive.auth import BearerTokens, guards
from tailsampler.collector.receive.listener import HttpListener
from tailsampler.collector.stats import StatsQuery

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
StatsSource = Callable[[StatsQuery], Awaitable[dict[str, object]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPEN_PATHS = frozenset({"/health", "/health/ready"})


def _is_console_page(path: str) -> bool:
    """The console's static files hold no data: the page itself sends the token with every
    API call, so it must load without one to ask for it."""
    return path == "/ui" or path.startswith("/ui/")


def allowed_host_names(settings: AdminConfig) -> frozenset[str] | None:
    """The names a ``Host`` header may carry besides IP addresses; None when any is allowed."""
    names = {name.lower().rstrip(".") for name in settings.allowed_hosts}
    if "*" in names:
        return None
    names |= {"localhost", socket.gethostname().lower()}
    if settings.endpoint.host:
        names.add(settings.endpoint.host.lower())
    return frozenset(names)


def host_allowed(host: str | None, names: frozenset[str] | None) -> bool:
    """Whether a request's ``Host`` header names this listener. An IP address always does: a
    rebinding page reaches the API only through a name of its own."""
    if names is None or not host:
        return True
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        before, colon, port = host.rpartition(":")
        name = before if colon and port.isdigit() else host
    name = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in names


class AdminServer:
    def __init__(
        self,
        settings: AdminConfig,
        metrics: Metrics,
        readiness: Readiness,
        stats: StatsSource,
        extra_routes: list[web.RouteDef] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._readiness = readiness
        self._stats = stats
        self._extra = extra_routes or []
        self._hosts = allowed_host_names(settings)
        self._auth: BearerTokens | None = None
        self._protect_metrics = settings.auth.protect_metrics if settings.auth else True
        self._listener: HttpListener | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self._settings
        self._auth, tls = guards("admin", settings.endpoint, settings.auth, "admin.auth", settings.tls, "admin.tls")
        app = web.Application(middlewares=[self._check_host, self._check_token])
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/health/ready", self._ready),
                web.get("/metrics", self._metrics_page),
                web.get("/api/v1/stats", self._stats_page),
                *self._extra,
            ]
        )
        self._listener = HttpListener(
            app, settings.endpoint, "admin",
            max_connections=settings.max_connections,
            read_header_timeout=float(settings.read_header_timeout),
            idle_timeout=float(settings.idle_timeout),
            tls=tls,
        )
        self.port = await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self._hosts):
            return web.Response(
                status=403, text="the Host header names none of this admin listener's names (see admin.allowed_hosts)"
            )
        return await handler(request)

    @web.middleware
    async def _check_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = self._auth
        if auth is None or request.path in _OPEN_PATHS or _is_console_page(request.path):
            return await handler(request)
        if request.path == "/metrics" and not self._protect_metrics:
            return await handler(request)
        if not auth.allows(request.headers.get("Authorization")):
            return web.json_response(
                {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                status=401, headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

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
