"""Shared fixtures: real OTLP sinks, real Redis/Valkey servers and Redis Cluster, collectors."""

pytest_plugins = ["tests.otlp_sink", "tests.redis_servers", "tests.collectors", "tests.browser"]
