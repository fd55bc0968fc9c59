"""The console at ``/ui`` on the admin listener, and the API it reads beyond stats and traces.

The console is static files in this package (HTML, CSS, one script; charts are inline SVG), served
by the collector itself: nothing to build, nothing fetched from elsewhere, so it works offline.
Every route here is an ordinary aiohttp route, so whatever guards the admin listener guards these
too. The pages hold no data: the script reads the JSON API, sending the bearer token the user
gives once when the API asks for one.

- ``GET /api/v1/openapi.json``: the admin API, described;
- ``GET /api/v1/policies``: the active policy list, in order, as configured;
- ``POST /api/v1/policies/what-if``: an edited policy list run on the last kept traces.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from importlib import resources

import msgspec
from aiohttp import web

from tailsampler.collector.config import BufferLimits, Config
from tailsampler.collector.console.whatif import MAX_TRACES, parse_policies, what_if
from tailsampler.common.errors import ConfigError
from tailsampler.storage import TraceStoreError

_FILES = resources.files(__package__)
_STATIC = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
_MAX_BODY = 256 * 1024


def _read(name: str) -> bytes:
    return (_FILES / name).read_bytes()


def console_routes(current: Callable[[], Config], store: Callable[[], str | None]) -> list[web.RouteDef]:
    """The console's routes; ``current`` returns the config in force (for its active policies),
    ``store`` the SQLite trace store the what-if box replays, if any (both as they are now, so a
    reload is followed)."""
    openapi = _read("openapi.json")
    static = {name: (_read(f"static/{name}"), kind) for name, kind in _STATIC.items()}

    async def index(request: web.Request) -> web.Response:
        body, kind = static["index.html"]
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})

    async def asset(request: web.Request) -> web.Response:
        found = static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such console file")
        return web.Response(body=found[0], content_type=found[1], headers={"Cache-Control": "no-cache"})

    async def spec(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    async def policies(request: web.Request) -> web.Response:
        active = current()
        limits = BufferLimits.of(active)
        ts = active.tail_sampling
        return web.json_response({
            "sample_on_first_match": ts.sample_on_first_match,
            "decision_wait_seconds": limits.decision_wait,
            "decision_wait_after_root_seconds": limits.decision_wait_after_root,
            "policies": msgspec.to_builtins(ts.policies),
            "trace_store": store() is not None,
        })

    async def replay(request: web.Request) -> web.Response:
        path = store()
        if path is None:
            return web.json_response({"error": "no sqlite exporter is configured: there are no kept traces to replay"}, status=409)
        try:
            body = json.loads(await request.content.read(_MAX_BODY + 1) or b"null")
        except ValueError:
            return web.json_response({"error": "expected a JSON body: {\"policies\": \"<YAML>\", \"traces\": N}"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("policies"), str):
            return web.json_response({"error": "policies: expected the tail_sampling block (or its policy list) as YAML text"}, status=400)
        traces = body.get("traces", 200)
        if not isinstance(traces, int) or isinstance(traces, bool) or not 1 <= traces <= MAX_TRACES:
            return web.json_response({"error": f"traces: expected a whole number from 1 to {MAX_TRACES}"}, status=400)
        try:
            settings = parse_policies(body["policies"])
        except ConfigError as exc:
            problems = [{"path": p.path, "message": p.message} for p in exc.problems]
            return web.json_response({"error": str(exc), "problems": problems}, status=400)
        try:
            answer = await asyncio.to_thread(what_if, settings, path, traces)
        except TraceStoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(answer)

    async def to_index(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    return [
        web.get("/ui", to_index),
        web.get("/ui/", index),
        web.get("/ui/{name}", asset),
        web.get("/api/v1/openapi.json", spec),
        web.get("/api/v1/policies", policies),
        web.post("/api/v1/policies/what-if", replay),
    ]
