"""An aiohttp application on a listening socket that cannot be exhausted by its clients.

- At most ``max_connections`` are open at once, TLS handshakes included; one past that is accepted
  and closed at once (so the kernel's backlog does not fill up) and the refusal is logged once,
  then at most once a minute with a count, never once per connection.
- A new connection must finish its TLS handshake and its first request's headers within
  ``read_header_timeout``; between requests it may sit idle for ``idle_timeout``.
- TLS is set up per connection with the newest certificate (``ServerTls.context()``), which is how
  a rotated certificate is used without a restart.
- The process's soft limit of open files is raised to its hard limit, so the caps, not the file
  descriptor table, are what refuses connections: a process out of descriptors cannot even answer
  ``/health``.

Each listener (OTLP/HTTP, admin) has its own caps, so a flood on one leaves the others answering.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import ssl
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from tailsampler.collector.receive.tls import ServerTls
from tailsampler.common.endpoints import Endpoint

log = logging.getLogger(__name__)

_REMINDER = 60.0  # seconds between log lines while connections are being refused


def raise_open_files_limit(name: str, max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do at start), and warn when
    even that leaves no room for ``max_connections``: the process would run out of descriptors
    before the cap refuses anything."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < max_connections + 64:
        log.warning(
            "%s: max_connections is %d but the process may open only %d files (ulimit -n); lower max_connections "
            "or raise the limit", name, max_connections, soft,
        )


class HttpListener:
    """``app`` served on ``endpoint`` within the listener's bounds; ``name`` labels its log lines
    (``otlp/http``, ``admin``)."""

    def __init__(
        self,
        app: web.Application,
        endpoint: Endpoint,
        name: str,
        *,
        max_connections: int,
        read_header_timeout: float,
        idle_timeout: float,
        tls: ServerTls | None = None,
        **runner_options: Any,
    ) -> None:
        self._endpoint = endpoint
        self._name = name
        self._max = max_connections
        self._header_timeout = read_header_timeout
        self._tls = tls
        self._open: set[_Connection] = set()
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._refusals = _Refusals(name, endpoint, max_connections)
        app.middlewares.insert(0, self._request_started)  # first: a refused request still started
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=idle_timeout, **runner_options
        )
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, reuse_port: bool = False) -> int:
        raise_open_files_limit(self._name, self._max)
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self, handlers),
                self._endpoint.listen_host,
                self._endpoint.port,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            await self._runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's own text repeats the address
            raise OSError(f"cannot listen for {self._name} on {self._endpoint}: {reason}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._open):
                if connection.handshaking:
                    connection.abort()
        await self._runner.cleanup()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @web.middleware
    async def _request_started(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        connection = self._by_transport.get(request.transport) if request.transport is not None else None
        if connection is not None:
            connection.request_started()
        return await handler(request)


class _Refusals:
    """Connections refused for the cap: the first is logged, then at most one line per
    ``_REMINDER`` with how many were refused since."""

    def __init__(self, name: str, endpoint: Endpoint, limit: int) -> None:
        self._what = f"{name} on {endpoint}"
        self._limit = limit
        self._unreported = 0
        self._logged_at: float | None = None

    def refused(self) -> None:
        self._unreported += 1
        now = time.monotonic()
        if self._logged_at is None:
            log.warning(
                "%s: %d connections open (max_connections); refusing new ones until some close", self._what, self._limit
            )
        elif now - self._logged_at >= _REMINDER:
            log.warning(
                "%s: refused %d more connections at max_connections (%d) since the last report",
                self._what, self._unreported, self._limit,
            )
        else:
            return
        self._logged_at, self._unreported = now, 0


class _Connection(asyncio.Protocol):
    """One accepted connection: counted, timed, upgraded to TLS when configured, then handed to
    aiohttp's own protocol, to which every event is passed on."""

    def __init__(self, listener: HttpListener, handlers: web.Server) -> None:
        self._listener = listener
        self._handlers = handlers
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._app_transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # what arrived between the handshake's end and the hand-over

    @property
    def handshaking(self) -> bool:
        return self._inner is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        self._transport = transport  # type: ignore[assignment]
        listener._open.add(self)
        if len(listener._open) > listener._max:
            listener._refusals.refused()
            transport.abort()  # type: ignore[attr-defined]
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(listener._header_timeout, self.abort)
        if listener._tls is None:
            self._attach(transport)
        else:
            self._handshake = loop.create_task(self._start_tls(loop, listener._tls.context()))

    async def _start_tls(self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext) -> None:
        assert self._transport is not None
        try:
            transport = await loop.start_tls(
                self._transport, self, context, server_side=True, ssl_handshake_timeout=self._listener._header_timeout
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            log.debug("%s: TLS handshake failed: %s", self._listener._name, exc)
            self.abort()
            return
        if transport is None or self._transport.is_closing():
            return
        self._attach(transport)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._app_transport = transport
        self._listener._by_transport[transport] = self
        self._inner = self._handlers()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def request_started(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self._listener
        listener._open.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._app_transport is not None:
            listener._by_transport.pop(self._app_transport, None)
        if self._inner is not None:
            self._inner.connection_lost(exc)
