"""Shared fixtures: real OTLP sinks, real Redis/Valkey servers and Redis Cluster, collectors."""

import importlib.util

pytest_plugins = [
    name
    for name in ("tests.otlp_sink", "tests.redis_servers", "tests.collectors")
    if importlib.util.find_spec(name) is not None
]
