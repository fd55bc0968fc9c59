"""A config file is checked whole: every problem in it is reported at once, with the file, the
key path, what was expected and, for a value outside a fixed set, the values allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tailsampler.collector.config import load_config, parse_config
from tailsampler.common.errors import ConfigError
from tests.collectors import REPO

THREE_MISTAKES = """
receivers:
  otlp:
    grpc: {endpoint: "127.0.0.1:4317", max_recv_msg_size: 4}
tail_sampling:
  policies:
    - {name: slow, type: latency, latency: {threshold_ms: fast}}
    - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 150}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    return str(info.value).splitlines()


def test_three_mistakes_get_three_messages() -> None:
    assert problems(THREE_MISTAKES) == [
        "x.yaml: receivers.otlp.grpc: Object contains unknown field `max_recv_msg_size`",
        "x.yaml: tail_sampling.policies[0].latency.threshold_ms: Expected `int`, got `str`",
        "x.yaml: tail_sampling.policies[1].probabilistic.sampling_percentage: must be between 0 and 100, got 150.0",
    ]


def test_an_unknown_value_lists_the_allowed_ones() -> None:
    assert problems("buffer: {type: disk, overflow: drop}\ntail_sampling: {policies: [{name: a, type: nope}]}") == [
        "x.yaml: tail_sampling.policies[0].type: Invalid value 'nope'; expected one of always_sample, latency, "
        "status_code, probabilistic, string_attribute, numeric_attribute, boolean_attribute, trace_state, "
        "trace_flags, span_count, ottl_condition, rate_limiting, bytes_limiting, and, not, drop, composite, "
        "dynamic, throughput",
        "x.yaml: buffer.type: Invalid enum value 'disk'; expected one of memory, redis",
        "x.yaml: buffer.overflow: Invalid enum value 'drop'; expected one of decide_early, backpressure",
    ]


def test_problems_in_several_sections_and_list_entries_are_all_reported() -> None:
    text = """
exporters:
  - {type: otlp, endpoint: "nowhere"}
  - {type: sqlite, queue_size: 0}
  - {type: carrier-pigeon}
admin: {endpoint: "localhost"}
service: {shutdown_timeout: soon}
"""
    assert problems(text) == [
        "x.yaml: exporters[0]: endpoint: expected host:port, got 'nowhere'",
        "x.yaml: exporters[1]: queue_size must be at least 1",
        "x.yaml: exporters[2].type: Invalid value 'carrier-pigeon'; expected one of otlp, otlphttp, file, sqlite, debug",
        "x.yaml: admin.endpoint: expected host:port, got 'localhost'",
        "x.yaml: service.shutdown_timeout: expected a duration such as 10s, 500ms or 1m, got 'soon'",
    ]


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tail_sampling:\n  decision_wait: 1s\n  policies: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line 4, column 1: not valid YAML: ")


def test_serve_and_validate_print_the_same_messages(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    cli = [sys.executable, "-m", "tailsampler.collector.cli"]
    validate = subprocess.run([*cli, "validate", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    serve = subprocess.run([*cli, "serve", "--config", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (validate.returncode, serve.returncode) == (1, 2)
    assert validate.stderr == serve.stderr
    assert len(validate.stderr.splitlines()) == 3 and all(line.startswith(f"{path}: ") for line in validate.stderr.splitlines())


def test_shards_are_bounded_by_a_clusters_slots() -> None:
    policies = "tail_sampling: {policies: [{name: a, type: always_sample}]}\n"
    assert parse_config(policies + "buffer: {type: redis, cluster: true, shards: 16384}").buffer.shards == 16384
    assert problems(policies + "buffer: {type: redis, cluster: true, shards: 16385}") == [
        "x.yaml: buffer.shards: must be at most 16384, a Redis Cluster's slots: each shard is one slot",
    ]


def test_the_write_ahead_log_settings_are_checked_at_their_key_paths() -> None:
    policies = "tail_sampling: {policies: [{name: a, type: always_sample}]}\n"
    config = parse_config(policies + "buffer: {wal: {dir: /var/lib/wal, max_bytes: 512MiB, fsync_interval: 250ms}}")
    assert config.buffer.wal is not None
    assert (config.buffer.wal.max_bytes, config.buffer.wal.fsync_interval, config.buffer.wal.fsync) == (512 * 2**20, 0.25, "interval")
    assert problems(policies + "buffer: {type: redis, wal: {dir: ' ', max_bytes: 64kB, fsync_interval: 0}, tick: 0}") == [
        "x.yaml: buffer.tick: must be greater than 0",
        "x.yaml: buffer.wal: a write-ahead log is for the memory buffer; the redis buffer's spans live in Redis",
        "x.yaml: buffer.wal.dir: must name a directory",
        "x.yaml: buffer.wal.fsync_interval: must be greater than 0 with fsync: interval",
        "x.yaml: buffer.wal.max_bytes: must be at least 1MiB, got 64000 bytes",
    ]
    assert problems(policies + "buffer: {wal: {max_bytes: lots, fsync: sometimes}}\nservice: {shutdown_timeout: soon}") == [
        "x.yaml: buffer.wal: Object missing required field `dir`",
        "x.yaml: buffer.wal.fsync: Invalid enum value 'sometimes'; expected one of always, interval, never",
        "x.yaml: buffer.wal.max_bytes: expected a size such as 2GiB, 512MiB or 1000000, got 'lots'",
        "x.yaml: service.shutdown_timeout: expected a duration such as 10s, 500ms or 1m, got 'soon'",
    ]
