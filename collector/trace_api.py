"""The admin listener's query API over the embedded SQLite store of kept traces.

The store is looked up on every request (``store``), so a config reload that adds, moves or
removes the ``sqlite`` exporter is followed; without one the API answers 404.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import msgspec
from aiohttp import web
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.common.otlp_json import to_json
from tailsampler.storage import TraceStoreError, get_trace, list_traces


def _db_path(store: Callable[[], str | None]) -> str:
    path = store()
    if path is None:
        raise web.HTTPNotFound(text="no sqlite exporter is configured, so no kept traces can be queried here")
    return path


def routes(store: Callable[[], str | None]) -> list[web.RouteDef]:
    async def list_page(request: web.Request) -> web.Response:
        db_path = _db_path(store)
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
            since = float(query["since"]) if "since" in query else None
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer and since Unix seconds") from None
        try:
            rows = await asyncio.to_thread(
                list_traces,
                db_path,
                limit=limit,
                errors_only=query.get("errors", "false").lower() in ("1", "true", "yes"),
                service=query.get("service"),
                policy=query.get("policy"),
                since=since,
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
