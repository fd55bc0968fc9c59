"""Shared fixtures: real OTLP sinks, real Redis/Valkey servers and Redis Cluster, collectors,
certificates made at test time, a headless browser."""

pytest_plugins = ["tests.otlp_sink", "tests.redis_servers", "tests.collectors", "tests.certs", "tests.browser"]
