"""Shared fixtures: real OTLP sinks, real Redis/Valkey servers and Redis Cluster, collectors,
certificates made at test time, a headless browser."""

import pytest

pytest_plugins = ["tests.otlp_sink", "tests.redis_servers", "tests.collectors", "tests.certs", "tests.browser"]

# The modules that run a second time on the pure-Python wire core in CI
# (``TAILSAMPLER_NO_EXTENSIONS=1 python -m pytest -m both_cores``, the README's test command):
# the walk itself, both buffers, the policies on the facts it gathers, and the receivers, the
# decision loop and the write-ahead log end to end. The rest of the suite does not depend on
# which core splits a request.
BOTH_CORES = frozenset({
    "test_wire", "test_wire_facts", "test_buffer_contract", "test_decide", "test_policies",
    "test_policies_combinators", "test_policies_engine", "test_end_to_end", "test_receivers",
    "test_memory_wal", "test_wal_serve", "test_overload", "test_late_recording", "test_multi_agent",
    "test_redis_buffer", "test_evaluate", "test_hardening",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in BOTH_CORES:
            item.add_marker(pytest.mark.both_cores)
