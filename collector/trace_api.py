"""The admin listener's query API over the embedded SQLite store of kept traces.

``limit`` is capped at ``MAX_LIMIT`` rows, so one request cannot make the agent read the whole
store into memory; ``since`` must be finite Unix seconds a trace can start at. The store is looked
up on every request (``store``), so a config reload that adds, moves or removes the ``sqlite``
exporter is followed; without one the API answers 404.
"""

from __future__ import annotations

import asyncio
import math
from typing import Callable, Mapping

import msgspec
from aiohttp import web
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.common.otlp_json import to_json
from tailsampler.storage import TraceStoreError, get_trace, list_traces


MAX_LIMIT = 1000
_LATEST_SINCE = 1e11  # Unix seconds in the year 5138: later is a typo or a probe, not a query
_TIMES = ("since", "until")  # Unix seconds of a trace's start
_DURATIONS = ("min_duration_ms", "max_duration_ms")


def _query_bounds(query: Mapping[str, str]) -> tuple[int, dict[str, float]]:
    """``limit`` (capped at MAX_LIMIT) and the time and duration bounds of a query;
    HTTPBadRequest saying what is wrong otherwise."""
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    if limit < 1:
        raise web.HTTPBadRequest(text="limit must be at least 1")
    bounds: dict[str, float] = {}
    for key in (*_TIMES, *_DURATIONS):
        if query.get(key, "") == "":
            continue
        try:
            value = float(query[key])
        except ValueError:
            value = math.nan
        highest = _LATEST_SINCE if key in _TIMES else math.inf
        if not (math.isfinite(value) and 0 <= value <= highest):
            what = f"Unix seconds between 0 and {_LATEST_SINCE:.0f}" if key in _TIMES else "a number of milliseconds, 0 or more"
            raise web.HTTPBadRequest(text=f"{key} must be {what}")
        bounds[key] = value
    return min(limit, MAX_LIMIT), bounds


def _db_path(store: Callable[[], str | None]) -> str:
    path = store()
    if path is None:
        raise web.HTTPNotFound(text="no sqlite exporter is configured, so no kept traces can be queried here")
    return path


def routes(store: Callable[[], str | None]) -> list[web.RouteDef]:
    async def list_page(request: web.Request) -> web.Response:
        db_path = _db_path(store)
        query = request.query
        limit, numbers = _query_bounds(query)
        try:
            rows = await asyncio.to_thread(
                list_traces,
                db_path,
                limit=limit,
                errors_only=query.get("errors", "false").lower() in ("1", "true", "yes"),
                service=query.get("service") or None,
                policy=query.get("policy") or None,
                **numbers,
            )
        except TraceStoreError as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        return web.json_response({"traces": rows})

    async def trace_page(request: web.Request) -> web.Response:
        db_path = _db_path(store)
        try:
            row = await asyncio.to_thread(get_trace, db_path, request.match_info["trace_id"])
        except TraceStoreError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if row is None:
            raise web.HTTPNotFound(text="no kept trace with that ID")
        spans = row.pop("spans")
        body = msgspec.json.encode({"trace": row, "otlp": msgspec.Raw(to_json(TracesData.FromString(spans)))})
        return web.Response(body=body, content_type="application/json")

    return [web.get("/api/v1/traces", list_page), web.get("/api/v1/traces/{trace_id}", trace_page)]
