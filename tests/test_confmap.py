"""``${env:NAME}``, ``${env:NAME:-default}``, ``${file:/path}`` and ``$$`` in config strings, as
the OpenTelemetry Collector's confmap reads them: expanded before decoding, checked with every
other problem, and never echoed back in a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailsampler.collector.config import parse_config
from tailsampler.common.confmap import expand, redact_url
from tailsampler.common.errors import ConfigError, Problem
from tests.collectors import REPO

SECRET = "hunter2-not-for-logs"
ALWAYS = "tail_sampling: {policies: [{name: all, type: always_sample}]}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    return str(info.value).splitlines()


def test_every_form_expands_anywhere_in_a_string(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(f"{SECRET}\n")
    env = {"HOST": "redis.internal", "EMPTY": ""}
    data, expansion = expand(
        {
            "url": "redis://:${file:%s}@${env:HOST}:6379/0" % secret,
            "list": ["${env:MISSING:-fallback}", "${env:EMPTY:-when-empty}", "${HOST}", "cost: $$5", "a$b", "$"],
            "untouched": 3,
        },
        env,
    )
    assert not expansion.problems
    assert data == {
        "url": f"redis://:{SECRET}@redis.internal:6379/0",
        "list": ["fallback", "when-empty", "redis.internal", "cost: $5", "a$b", "$"],
        "untouched": 3,
    }


def test_file_contents_lose_one_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("line one\nline two\n\n")
    data, _ = expand({"v": f"${{file:{path}}}"}, {})
    assert data == {"v": "line one\nline two\n"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${env:NOT_SET}", "receivers.otlp.grpc.endpoint: ${env:NOT_SET}: environment variable NOT_SET is not set"),
        ("${file:/nonexistent/token}", "receivers.otlp.grpc.endpoint: ${file:/nonexistent/token}: cannot read /nonexistent/token"),
        ("${vault:kv/x}", "unsupported provider 'vault': use env or file"),
        ("${env:1BAD}", "'1BAD' is not an environment variable name"),
        ("${env:OPEN", "unterminated reference"),
    ],
)
def test_a_reference_that_cannot_be_resolved_names_the_key_and_the_reference(value: str, message: str) -> None:
    assert os.environ.get("NOT_SET") is None
    [line] = problems(f'receivers: {{otlp: {{grpc: {{endpoint: "{value}"}}}}}}')
    assert line.startswith("x.yaml: ") and message in line


def test_an_unset_variable_is_reported_with_every_other_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TS_TOKEN", raising=False)
    assert problems(
        """
receivers: {otlp: {auth: {bearer_tokens: ["${env:TS_TOKEN}"]}}}
buffer: {type: disk}
tail_sampling: {num_traces: "${env:TS_TRACES}"}
"""
    ) == [
        "x.yaml: receivers.otlp.auth.bearer_tokens[0]: ${env:TS_TOKEN}: environment variable TS_TOKEN is not set "
        "(give a default: ${env:TS_TOKEN:-value})",
        "x.yaml: tail_sampling.num_traces: ${env:TS_TRACES}: environment variable TS_TRACES is not set "
        "(give a default: ${env:TS_TRACES:-value})",
        "x.yaml: buffer.type: Invalid enum value 'disk'; expected one of memory, redis",
    ]


def test_expanded_values_are_decoded_as_the_key_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TS_TRACES", "1234")
    monkeypatch.setenv("TS_BLOCK", "true")
    monkeypatch.setenv("TS_WAIT", "2s")
    config = parse_config(
        "tail_sampling: {num_traces: '${env:TS_TRACES}', block_on_overflow: '${env:TS_BLOCK}', decision_wait: '${env:TS_WAIT}',"
        " policies: [{name: all, type: always_sample}]}",
        "x.yaml",
    )
    assert config.tail_sampling.num_traces == 1234
    assert config.tail_sampling.block_on_overflow is True
    assert config.tail_sampling.decision_wait == 2.0


def test_an_empty_token_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TS_TOKEN", "")
    [line] = problems('receivers: {otlp: {auth: {bearer_tokens: ["${env:TS_TOKEN}"]}}}')
    assert "a token cannot be empty" in line


def test_a_secret_from_the_environment_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TS_REDIS", f"http://user:{SECRET}@redis:6379")
    monkeypatch.setenv("TS_ENDPOINT", SECRET)
    monkeypatch.setenv("TS_LEVEL", SECRET)
    lines = problems(
        """
buffer: {type: redis, url: "${env:TS_REDIS}"}
exporters: [{type: otlp, endpoint: "${env:TS_ENDPOINT}"}]
service: {log_level: "${env:TS_LEVEL}"}
"""
    )
    assert lines, "the config has problems"
    text = "\n".join(lines)
    assert SECRET not in text
    assert "exporters[0]: endpoint: expected host:port, got '${env:TS_ENDPOINT}'" in text
    assert "service.log_level: Invalid enum value '${env:TS_LEVEL}'" in text


def test_a_redis_password_written_in_the_file_is_masked_too() -> None:
    [line] = problems(f'buffer: {{type: redis, url: "http://app:{SECRET}@redis:6379/0"}}\n{ALWAYS}')
    assert SECRET not in line and "http://app:***@redis:6379/0" in line


def test_redact_url() -> None:
    assert redact_url(f"rediss://user:{SECRET}@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redact_url(f"redis://:{SECRET}@[::1]:6379") == "redis://:***@[::1]:6379"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_redaction_reaches_a_struct_level_problem_but_leaves_unrelated_ones_alone() -> None:
    _, expansion = expand({"a": {"b": "${env:V}"}, "c": "x"}, {"V": "1"})
    assert expansion.redact(Problem("a", "b is 1")).message == "b is ${env:V}"
    assert expansion.redact(Problem("c", "port 1 is in use")).message == "port 1 is in use"


def run_validate(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailsampler.collector.cli", "validate", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )


def test_validate_expands_references_like_serve(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "receivers: {otlp: {grpc: {endpoint: '${env:TS_GRPC}'}, auth: {bearer_tokens: ['${env:TS_TOKEN}']}}}\n"
        "buffer: {type: redis, url: 'redis://:${env:TS_PASSWORD}@127.0.0.1:6379/0'}\n"
        f"{ALWAYS}\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
    missing = subprocess.run(
        [sys.executable, "-m", "tailsampler.collector.cli", "validate", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )
    assert missing.returncode == 1
    assert "receivers.otlp.grpc.endpoint: ${env:TS_GRPC}: environment variable TS_GRPC is not set" in missing.stderr
    assert "receivers.otlp.auth.bearer_tokens[0]: ${env:TS_TOKEN}" in missing.stderr
    assert "buffer.url: ${env:TS_PASSWORD}" in missing.stderr

    ok = run_validate(path, TS_GRPC="0.0.0.0:4317", TS_TOKEN=SECRET, TS_PASSWORD=SECRET)
    assert ok.returncode == 0, ok.stderr
    assert SECRET not in ok.stdout + ok.stderr

    bad = run_validate(path, TS_GRPC=f"{SECRET}", TS_TOKEN=SECRET, TS_PASSWORD=SECRET)
    assert bad.returncode == 1
    assert "receivers.otlp.grpc.endpoint" in bad.stderr and SECRET not in bad.stderr
