"""The ``exporters:`` section as the config loader decodes it: defaults, names and clear errors."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tailsampler.collector.config import ConfigError, parse_config
from tailsampler.storage import FileSpec, OtlpHttpSpec, OtlpSpec, SqliteSpec, build_exporters, exporter_names


POLICIES = "tail_sampling: {policies: [{name: all, type: always_sample}]}\n"  # a config needs one


def exporters(yaml_text: str):
    return parse_config(POLICIES + yaml_text, "x.yaml").exporters


def test_default_is_the_embedded_sqlite_store() -> None:
    [only] = parse_config(POLICIES, "x.yaml").exporters
    assert isinstance(only, SqliteSpec)
    assert only.path == "./tailsampler.db"
    assert only.retention.max_age == 7 * 86400


def test_every_type_with_its_keys() -> None:
    otlp, http, file, sqlite = exporters(
        """
exporters:
  - type: otlp
    endpoint: jaeger:4317
    insecure: true
    headers: {x-tenant: blue}
    compression: none
    timeout: 5s
    retry_on_failure: {initial_interval: 500ms, max_interval: 10s, max_elapsed_time: 2m}
    circuit_breaker: {failure_threshold: 3, cooldown: 30s}
  - {type: otlphttp, endpoint: "https://otlp.example.com", queue_size: 50}
  - {type: file, path: /var/lib/ts/kept.jsonl, rotation: {max_megabytes: 50, max_backups: 3}}
  - {type: sqlite, path: /var/lib/ts/kept.db, retention: {max_age: 48h, max_megabytes: 200}}
"""
    )
    assert isinstance(otlp, OtlpSpec) and otlp.insecure and otlp.headers == {"x-tenant": "blue"}
    assert (otlp.timeout, otlp.retry_on_failure.initial_interval, otlp.retry_on_failure.max_elapsed_time) == (
        5.0,
        0.5,
        120.0,
    )
    assert otlp.circuit_breaker.cooldown == 30.0
    assert isinstance(http, OtlpHttpSpec) and http.url == "https://otlp.example.com/v1/traces"
    assert http.queue_size == 50 and http.compression == "gzip"
    assert isinstance(file, FileSpec) and file.rotation is not None and file.rotation.max_backups == 3
    assert isinstance(sqlite, SqliteSpec) and sqlite.retention.max_age == 48 * 3600


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{type: kafka}", "x.yaml: exporters[0].type: Invalid value 'kafka'"),
        ("{type: otlp, endpoint: jaeger}", "x.yaml: exporters[0]: endpoint: expected host:port, got 'jaeger'"),
        ("{type: otlp, endpont: 'a:1'}", "x.yaml: exporters[0]: Object contains unknown field `endpont`"),
        ("{type: otlp, compression: zstd}", "x.yaml: exporters[0].compression: Invalid enum value 'zstd'"),
        ("{type: otlp, timeout: soon}", "x.yaml: exporters[0].timeout: expected a duration"),
        ("{type: otlp, cert_file: c.pem}", "cert_file and key_file must be given together"),
        ("{type: otlphttp, endpoint: 'otlp:4318'}", "exporters[0]: endpoint: expected an http:// or https:// URL"),
        ("{type: sqlite, queue_size: 0}", "x.yaml: exporters[0]: queue_size must be at least 1"),
        ("{type: sqlite, retention: {interval: 0s}}", "x.yaml: exporters[0].retention: interval must be greater"),
        ("{type: file, rotation: {max_backups: -1}}", "exporters[0].rotation: max_backups cannot be negative"),
        ("{type: otlp, circuit_breaker: {failure_threshold: 0}}", "exporters[0].circuit_breaker: failure_threshold"),
    ],
)
def test_errors_name_the_file_and_key(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        exporters(f"exporters:\n  - {entry}\n")
    assert message in str(err.value)


def test_names_default_to_the_type_and_must_be_unique() -> None:
    specs = exporters("exporters: [{type: otlp}, {type: otlp}, {type: sqlite}, {type: file, name: archive}]")
    assert exporter_names(specs) == ["otlp/0", "otlp/1", "sqlite", "archive"]
    with pytest.raises(ConfigError, match=r"x.yaml: exporters\[1\].name: 'main' is already used by exporters\[0\]"):
        exporters("exporters: [{type: otlp, name: main}, {type: sqlite, name: main}]")


def test_exporters_share_one_registry() -> None:
    registry = CollectorRegistry()
    built = build_exporters(exporters("exporters: [{type: otlp}, {type: sqlite}]"), registry)
    assert [e.name for e in built] == ["otlp", "sqlite"]
    assert registry.get_sample_value("tailsampler_exporter_traces_exported_total", {"exporter": "sqlite"}) == 0
    assert registry.get_sample_value("tailsampler_exporter_traces_exported_total", {"exporter": "otlp"}) == 0
