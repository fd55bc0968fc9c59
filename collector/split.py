"""Split an OTLP export request into per-trace fragments, touching each span once.

A fragment is a complete ``TracesData.resource_spans`` entry (tag, length, ``ResourceSpans``)
holding only one trace's spans with their resource and scope, so that ``b"".join`` of a trace's
fragments is already a valid ``TracesData`` / ``ExportTraceServiceRequest`` body. Spans are
copied as serialized bytes; the resource and scope are serialized once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_TAG_1 = b"\x0a"  # field 1, length-delimited: resource / scope / TracesData.resource_spans
_TAG_2 = b"\x12"  # field 2, length-delimited: scope_spans / spans
_TAG_3 = b"\x1a"  # field 3, length-delimited: schema_url


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


@dataclass(slots=True)
class Fragment:
    """One trace's share of one request, ready to append to the buffer."""

    data: bytes
    span_count: int
    has_root: bool


@dataclass(slots=True)
class SplitResult:
    fragments: dict[bytes, Fragment]
    span_count: int
    rejected_spans: int
    error_message: str


def split_request(request: ExportTraceServiceRequest) -> SplitResult:
    """Group the request's spans by trace ID; spans with invalid IDs are refused and counted."""
    # trace_id -> list of (resource_spans index, scope_spans index, span bytes)
    grouped: dict[bytes, list[tuple[int, int, bytes]]] = {}
    roots: set[bytes] = set()
    rejected = 0
    accepted = 0
    for ri, rs in enumerate(request.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            for span in ss.spans:
                trace_id = span.trace_id
                span_id = span.span_id
                if (
                    len(trace_id) != 16
                    or trace_id == _ZERO_TRACE
                    or len(span_id) != 8
                    or span_id == _ZERO_SPAN
                ):
                    rejected += 1
                    continue
                accepted += 1
                if not span.parent_span_id:
                    roots.add(trace_id)
                entries = grouped.get(trace_id)
                if entries is None:
                    grouped[trace_id] = [(ri, si, span.SerializeToString())]
                else:
                    entries.append((ri, si, span.SerializeToString()))
    wrap = _Wrapping(request)
    fragments = {
        trace_id: Fragment(wrap.encode(entries), len(entries), trace_id in roots)
        for trace_id, entries in grouped.items()
    }
    message = ""
    if rejected:
        message = (
            f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, not all zero"
        )
    return SplitResult(fragments, accepted, rejected, message)


class _Wrapping:
    """The resource and scope envelopes of one request, each serialized at most once."""

    def __init__(self, request: ExportTraceServiceRequest) -> None:
        self._request = request
        self._resources: dict[int, tuple[bytes, bytes]] = {}
        self._scopes: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def _resource(self, ri: int) -> tuple[bytes, bytes]:
        found = self._resources.get(ri)
        if found is None:
            rs = self._request.resource_spans[ri]
            head = _field(_TAG_1, rs.resource.SerializeToString()) if rs.HasField("resource") else b""
            tail = _field(_TAG_3, rs.schema_url.encode()) if rs.schema_url else b""
            found = self._resources[ri] = (head, tail)
        return found

    def _scope(self, ri: int, si: int) -> tuple[bytes, bytes]:
        found = self._scopes.get((ri, si))
        if found is None:
            ss = self._request.resource_spans[ri].scope_spans[si]
            head = _field(_TAG_1, ss.scope.SerializeToString()) if ss.HasField("scope") else b""
            tail = _field(_TAG_3, ss.schema_url.encode()) if ss.schema_url else b""
            found = self._scopes[(ri, si)] = (head, tail)
        return found

    def encode(self, entries: list[tuple[int, int, bytes]]) -> bytes:
        """Nest one trace's serialized spans (in request order) in their scopes and resources."""
        out: list[bytes] = []
        scopes: list[bytes] = []
        spans: list[bytes] = []
        ri_prev = si_prev = -1
        for ri, si, span_bytes in entries + [(-1, -1, b"")]:
            if (ri, si) != (ri_prev, si_prev) and spans:
                head, tail = self._scope(ri_prev, si_prev)
                scopes.append(_field(_TAG_2, head + b"".join(spans) + tail))
                spans.clear()
            if ri != ri_prev and scopes:
                head, tail = self._resource(ri_prev)
                out.append(_field(_TAG_1, head + b"".join(scopes) + tail))
                scopes.clear()
            ri_prev, si_prev = ri, si
            spans.append(_field(_TAG_2, span_bytes))
        return b"".join(out)
