"""The admin listener's query API over the embedded SQLite store of kept traces."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tailsampler.common.otlp_json import to_json
from tailsampler.storage import TraceStoreError, get_trace, list_traces


_NUMBERS = ("since", "until", "min_duration_ms", "max_duration_ms")


def routes(db_path: str) -> list[web.RouteDef]:
    async def list_page(request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
            numbers = {key: float(query[key]) for key in _NUMBERS if query.get(key, "") != ""}
        except ValueError:
            raise web.HTTPBadRequest(
                text="limit must be an integer; since and until Unix seconds; min_duration_ms and max_duration_ms numbers"
            ) from None
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
