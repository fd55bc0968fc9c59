"""A small online shop as a microservice call graph, and traces drawn from it.

Each request enters at ``api-gateway`` and fans out to the services behind it over HTTP, to
PostgreSQL, Redis and Kafka, with the span names, kinds and semantic-convention attributes the
OpenTelemetry instrumentations emit. A trace is ground truth for the sampling-quality report: it
knows whether it failed (some span has status ERROR) and whether it is slow (its duration, earliest
start to latest end, reaches the slow threshold); normal traces stay under half the threshold so
that the two classes never blur.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tailsampler.loadgen.wire import encode_span

_SAMPLED_LOCAL = 0x101  # W3C sampled flag + "has is_remote" (parent in the same process)
_SAMPLED_REMOTE = 0x301  # ... and "is_remote" (parent in the caller's process)

SERVICES = (
    "api-gateway",
    "auth-service",
    "user-service",
    "cart-service",
    "inventory-service",
    "recommendation-service",
    "payment-service",
    "shipping-service",
    "notification-service",
)


def _kv(attributes: dict[str, object]) -> list[KeyValue]:
    out = []
    for key, value in attributes.items():
        if isinstance(value, bool):
            out.append(KeyValue(key=key, value=AnyValue(bool_value=value)))
        elif isinstance(value, int):
            out.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            out.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
    return out


def resource_bytes(service: str, instance: int = 0) -> bytes:
    """The serialized ``Resource`` of one service instance, as an SDK would describe it."""
    return Resource(
        attributes=_kv(
            {
                "service.name": service,
                "service.namespace": "shop",
                "service.version": "1.4.2",
                "service.instance.id": f"{service}-{instance}",
                "deployment.environment.name": "production",
                "host.name": f"node-{instance}",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": "1.27.0",
            }
        )
    ).SerializeToString()


def scope_bytes(service: str) -> bytes:
    return InstrumentationScope(name=f"shop.{service}", version="1.4.2").SerializeToString()


@dataclass(eq=False)
class Operation:
    """One span in the call graph; its children run one after another inside it.

    ``self_ms`` is the span's own work (half before its children, half after); ``fan_out`` marks
    a call repeated once per item of the request (the fan-out knob).
    """

    service: str
    name: str
    kind: int
    attributes: dict[str, object]
    error_attributes: dict[str, object]
    self_ms: tuple[float, float]
    children: tuple[Operation, ...] = ()
    fan_out: bool = False
    remote_parent: bool = False
    events: tuple[tuple[str, dict[str, object]], ...] = ()
    service_index: int = field(init=False)
    ok_template: bytes = field(init=False)
    error_template: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.service_index = SERVICES.index(self.service)
        flags = _SAMPLED_REMOTE if self.remote_parent else _SAMPLED_LOCAL
        events = [_event(name, attributes) for name, attributes in self.events]
        self.ok_template = Span(
            name=self.name, kind=self.kind, attributes=_kv(self.attributes), flags=flags, events=events
        ).SerializeToString()
        error_type = str(self.error_attributes.get("error.type", "Error"))
        exception = _event("exception", {"exception.type": error_type, "exception.message": f"{self.name} failed",
                                         "exception.escaped": False})
        self.error_template = Span(
            name=self.name,
            kind=self.kind,
            attributes=_kv({**self.attributes, **self.error_attributes}),
            flags=flags,
            events=[*events, exception],
            status=Status(code=Status.STATUS_CODE_ERROR, message=f"{self.name} failed"),
        ).SerializeToString()


# an event's time sits in the operation's template, written once: the collector never reads it
_EVENT_TIME_NS = 1_700_000_000_000_000_000


def _event(name: str, attributes: dict[str, object]) -> Span.Event:
    """A span event as instrumentations record them (``exception`` on failure, pool waits)."""
    return Span.Event(time_unix_nano=_EVENT_TIME_NS, name=name, attributes=_kv(attributes))


def _http(caller: str, callee: str, method: str, route: str, *children: Operation,
          self_ms: tuple[float, float] = (0.3, 2.0), fan_out: bool = False) -> Operation:
    """An HTTP call: the caller's CLIENT span wrapping the callee's SERVER span."""
    server = Operation(
        callee, f"{method} {route}", Span.SPAN_KIND_SERVER,
        {"http.request.method": method, "http.route": route, "url.path": route, "url.scheme": "http",
         "server.address": callee, "server.port": 8080, "network.protocol.version": "1.1",
         "client.address": _address(caller), "network.peer.address": _address(caller), "network.peer.port": 51234,
         "user_agent.original": "python-httpx/0.27.0", "http.response.status_code": 200},
        {"http.response.status_code": 500, "error.type": "500"},
        self_ms, children, remote_parent=True,
    )
    return Operation(
        caller, f"{method} {route}", Span.SPAN_KIND_CLIENT,
        {"http.request.method": method, "url.full": f"http://{callee}:8080{route}", "url.scheme": "http",
         "server.address": callee, "server.port": 8080, "network.protocol.version": "1.1",
         "network.peer.address": _address(callee), "network.peer.port": 8080, "http.response.status_code": 200},
        {"http.response.status_code": 500, "error.type": "500"},
        (0.2, 1.0), (server,), fan_out=fan_out,
    )


def _address(host: str) -> str:
    """A stable private address for each host of the shop."""
    return f"10.0.1.{sum(host.encode()) % 250 + 2}"


def _postgres(service: str, operation: str, table: str, statement: str) -> Operation:
    """The data-access layer's ``db-query`` span around the PostgreSQL client span."""
    client = Operation(
        service, f"{operation} shop.{table}", Span.SPAN_KIND_CLIENT,
        {"db.system": "postgresql", "db.namespace": "shop", "db.name": "shop",
         "db.operation.name": operation, "db.collection.name": table, "db.statement": statement,
         "server.address": "postgres", "server.port": 5432, "network.peer.address": _address("postgres"),
         "network.peer.port": 5432},
        {"error.type": "psycopg.errors.QueryCanceled"},
        (0.5, 6.0),
    )
    code = {"code.function": f"{table}.{operation.lower()}", "code.namespace": f"shop.{service.split('-')[0]}.store",
            "code.filepath": f"/app/shop/{service.split('-')[0]}/store.py", "code.lineno": 42}
    return Operation(service, "db-query", Span.SPAN_KIND_INTERNAL, code,
                     {"error.type": "QueryError"}, (0.05, 0.3), (client,),
                     events=(("db.client.connection.acquired", {"db.client.connection.pool.name": "shop"}),))


def _redis(service: str, command: str, statement: str) -> Operation:
    return Operation(
        service, command, Span.SPAN_KIND_CLIENT,
        {"db.system": "redis", "db.operation.name": command, "db.statement": statement,
         "db.namespace": "0", "server.address": "redis", "server.port": 6379,
         "network.peer.address": _address("redis"), "network.peer.port": 6379},
        {"error.type": "redis.exceptions.TimeoutError"},
        (0.1, 1.0),
    )


def _kafka(service: str, topic: str) -> Operation:
    return Operation(
        service, f"publish {topic}", Span.SPAN_KIND_PRODUCER,
        {"messaging.system": "kafka", "messaging.destination.name": topic,
         "messaging.operation.type": "publish", "messaging.client.id": f"{service}-producer",
         "server.address": "kafka", "server.port": 9092, "network.peer.address": _address("kafka")},
        {"error.type": "KafkaTimeoutError"},
        (0.2, 2.0),
    )


def _external(service: str, method: str, url: str) -> Operation:
    """A call to a third party that sends no spans back: a lone CLIENT span."""
    host = url.split("/")[2]
    return Operation(
        service, method, Span.SPAN_KIND_CLIENT,
        {"http.request.method": method, "url.full": url, "url.scheme": "https", "server.address": host,
         "server.port": 443, "network.protocol.version": "1.1", "network.peer.address": "203.0.113.17",
         "http.response.status_code": 200},
        {"http.response.status_code": 502, "error.type": "502"},
        (20.0, 80.0),
    )


def _gateway(method: str, route: str, *children: Operation) -> Operation:
    return Operation(
        "api-gateway", f"{method} {route}", Span.SPAN_KIND_SERVER,
        {"http.request.method": method, "http.route": route, "url.scheme": "https",
         "server.address": "shop.example.com", "server.port": 443, "network.protocol.version": "2",
         "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)", "client.address": "198.51.100.23",
         "url.path": route, "http.response.status_code": 200},
        {"http.response.status_code": 500, "error.type": "500"},
        (0.2, 1.5), children,
    )


def _auth() -> Operation:
    return _http("api-gateway", "auth-service", "POST", "/auth/verify",
                 _redis("auth-service", "GET", "GET session:?"))


def _inventory(fan_out: bool, operation: str = "SELECT") -> Operation:
    statement = ("SELECT id, sku, stock, price FROM products WHERE id = $1" if operation == "SELECT"
                 else "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1")
    method = "GET" if operation == "SELECT" else "POST"
    route = "/inventory/{sku}" if operation == "SELECT" else "/inventory/{sku}/reserve"
    return _http("api-gateway", "inventory-service", method, route,
                 _postgres("inventory-service", operation, "products", statement), fan_out=fan_out)


def _recommendations() -> Operation:
    return _http("api-gateway", "recommendation-service", "GET", "/recommendations/{user_id}",
                 _redis("recommendation-service", "GET", "GET recs:?"),
                 _postgres("recommendation-service", "SELECT", "recommendations",
                           "SELECT product_id, score FROM recommendations WHERE user_id = $1 LIMIT 10"))


def build_routes() -> list[tuple[Operation, int]]:
    """The gateway's routes with their share of traffic."""
    return [
        (_gateway("GET", "/api/v1/products/{id}", _auth(), _inventory(False), _recommendations()), 40),
        (_gateway("GET", "/api/v1/cart", _auth(),
                  _http("api-gateway", "cart-service", "GET", "/cart/{user_id}",
                        _redis("cart-service", "HGETALL", "HGETALL cart:?")),
                  _inventory(True)), 20),
        (_gateway("GET", "/api/v1/recommendations", _auth(), _recommendations()), 15),
        (_gateway("POST", "/api/v1/checkout", _auth(),
                  _http("api-gateway", "cart-service", "GET", "/cart/{user_id}",
                        _redis("cart-service", "HGETALL", "HGETALL cart:?")),
                  _inventory(True, "UPDATE"),
                  _http("api-gateway", "payment-service", "POST", "/payments",
                        _postgres("payment-service", "INSERT", "payments",
                                  "INSERT INTO payments (order_id, amount, currency) VALUES ($1, $2, $3)"),
                        _external("payment-service", "POST", "https://api.payments.example/v1/charges")),
                  _http("api-gateway", "shipping-service", "POST", "/shipping/quote"),
                  _http("api-gateway", "notification-service", "POST", "/notifications/order",
                        _kafka("notification-service", "order-events"))), 10),
        (_gateway("POST", "/api/v1/login",
                  _http("api-gateway", "auth-service", "POST", "/auth/login",
                        _postgres("auth-service", "SELECT", "users",
                                  "SELECT id, password_hash FROM users WHERE email = $1"),
                        _redis("auth-service", "SET", "SET session:? ? EX ?")),
                  _http("api-gateway", "user-service", "GET", "/users/{user_id}",
                        _postgres("user-service", "SELECT", "users",
                                  "SELECT id, name, email FROM users WHERE id = $1"))), 15),
    ]


@dataclass(frozen=True, slots=True)
class TrafficShape:
    """What share of traces fail or run slow, and how wide requests fan out."""

    error_ratio: float = 0.001
    slow_ratio: float = 0.01
    slow_threshold_s: float = 1.0
    fan_out: int = 3

    def __post_init__(self) -> None:
        for name in ("error_ratio", "slow_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.slow_threshold_s <= 0:
            raise ValueError(f"slow-threshold must be positive, got {self.slow_threshold_s}")
        if not 1 <= self.fan_out <= 64:
            raise ValueError(f"fan-out must be between 1 and 64, got {self.fan_out}")


@dataclass(slots=True)
class Trace:
    """One generated trace: framed spans in the order they end (the root last), plus ground truth."""

    trace_id: bytes
    spans: list[tuple[int, bytes]]
    error: bool
    slow: bool
    duration_ns: int


class _Spread:
    """Picks ``ratio`` of the traces, evenly spaced and starting at trace ``first``, so that any
    run with a ratio above 0 holds at least one (a report never rates error capture on nothing)."""

    def __init__(self, ratio: float, first: int) -> None:
        self._step = 1 / ratio if ratio else 0.0
        self._next = float(first)
        self._index = 0

    def __call__(self) -> bool:
        picked = bool(self._step) and self._index >= self._next
        if picked:
            self._next += self._step
        self._index += 1
        return picked


class TraceGenerator:
    """Draws traces from the call graph; the same seed gives the same traces. Failing and slow
    traces are spread evenly: the first trace fails, the second is slow (when both ratios are
    small), and so on at their ratios."""

    def __init__(self, shape: TrafficShape, seed: int = 1) -> None:
        self.shape = shape
        self._rng = random.Random(seed)
        self._errors = _Spread(shape.error_ratio, first=0)
        self._slow = _Spread(shape.slow_ratio, first=0 if shape.slow_ratio >= 1 else 1)
        routes = build_routes()
        self._routes = [op for op, _ in routes]
        self._weights = [w for _, w in routes]

    def _id(self, size: int) -> bytes:
        while True:
            value = self._rng.randbytes(size)
            if any(value):
                return value

    def next_trace(self, start_ns: int) -> Trace:
        rng = self._rng
        shape = self.shape
        route = rng.choices(self._routes, self._weights)[0]
        ops: list[Operation] = []
        parents: list[int] = []
        self._expand(route, -1, ops, parents)
        count = len(ops)
        own = [rng.uniform(*op.self_ms) * 1e6 for op in ops]
        error = self._errors()
        slow = self._slow()
        failing = [False] * count
        if error:  # the failure surfaces on the failing span and every caller above it
            node = rng.randrange(count)
            while node >= 0:
                failing[node] = True
                node = parents[node]
        threshold_ns = shape.slow_threshold_s * 1e9
        total = sum(own)  # children run sequentially, so the root lasts the sum of all own work
        if slow:
            own[rng.randrange(count)] += max(0.0, threshold_ns * rng.uniform(1.1, 2.0) - total)
        elif total > threshold_ns / 2:
            scale = threshold_ns / 2 / total * rng.uniform(0.5, 0.95)
            own = [value * scale for value in own]
        starts, ends = _schedule(own, parents, start_ns)
        trace_id = self._id(16)
        span_ids = [self._id(8) for _ in range(count)]
        order = sorted(range(count), key=lambda i: (ends[i], -i))
        spans = [
            (
                ops[i].service_index,
                encode_span(
                    ops[i].error_template if failing[i] else ops[i].ok_template,
                    trace_id,
                    span_ids[i],
                    span_ids[parents[i]] if parents[i] >= 0 else b"",
                    starts[i],
                    ends[i],
                ),
            )
            for i in order
        ]
        duration = ends[0] - starts[0]
        return Trace(trace_id, spans, any(failing), duration >= threshold_ns, duration)

    def _expand(self, op: Operation, parent: int, ops: list[Operation], parents: list[int]) -> None:
        index = len(ops)
        ops.append(op)
        parents.append(parent)
        for child in op.children:
            for _ in range(self.shape.fan_out if child.fan_out else 1):
                self._expand(child, index, ops, parents)


def _schedule(own: list[float], parents: list[int], start_ns: int) -> tuple[list[int], list[int]]:
    """Start and end times: half of a span's own work before its children, half after."""
    count = len(own)
    duration = own[:]
    for i in range(count - 1, 0, -1):  # children always come after their parent in DFS order
        duration[parents[i]] += duration[i]
    starts = [0] * count
    cursor = [0.0] * count  # where the next child of each span may start
    starts[0] = start_ns
    cursor[0] = start_ns + own[0] / 2
    for i in range(1, count):
        p = parents[i]
        starts[i] = int(cursor[p])
        cursor[p] += duration[i]
        cursor[i] = starts[i] + own[i] / 2
    ends = [int(starts[i] + duration[i]) for i in range(count)]
    return starts, ends
