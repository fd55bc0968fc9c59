"""The Grafana dashboard and the Prometheus alert rules read only what a running collector exports.

One ``tailsampler serve`` process runs the Kubernetes config (its listeners, Redis and exporters
pointed at this machine, its bounds made small) and gets OpenTelemetry SDK traffic that makes
every labelled series exist: kept and dropped traces, early decisions for overflow and size, late
spans, spans with an invalid ID, a Redis that stops answering, an exporter whose backend is down.
Its /metrics is scraped, and every metric, label and label value the dashboard and the rules
name is looked up in that scrape.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import promql_parser as promql
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Status, StatusCode

from tailsampler.collector.config import load_config
from tailsampler.loadgen.processes import free_port
from tests.collectors import AgentProcess
from tests.deploy_files import (
    ALERTS, DASHBOARD, JOB, compose_agent_config, kubernetes_config_file, on_this_machine,
)
from tests.promql_usage import Exported, Usage, numbers
from tests.redis_servers import RedisProcess
from tests.sdk import SdkClient, remote_parent
from tests.waiting import wait_until

# What the dashboard must show (the pipeline end to end), by the metrics that show it.
DASHBOARD_METRICS = {
    "tailsampler_spans_received_total", "tailsampler_requests_total", "tailsampler_spans_refused_total",
    "tailsampler_late_spans_total", "tailsampler_traces_decided_total", "tailsampler_spans_decided_total",
    "tailsampler_early_decisions_total", "tailsampler_policy_votes_total", "tailsampler_buffer_traces",
    "tailsampler_buffer_bytes", "tailsampler_decision_lag_seconds_bucket", "tailsampler_decision_round_seconds_bucket",
    "tailsampler_exporter_queue_traces", "tailsampler_exporter_queue_capacity", "tailsampler_exporter_retries_total",
    "tailsampler_exporter_circuit_state", "tailsampler_exporter_traces_exported_total",
    "tailsampler_exporter_traces_failed_total", "up",
}
# What the alerts must watch: agents missing, buffer filling, decisions lagging, refusals,
# exporter circuits.
ALERT_METRICS = {
    "up", "tailsampler_buffer_bytes", "tailsampler_buffer_traces", "tailsampler_decision_lag_seconds_bucket",
    "tailsampler_spans_refused_total", "tailsampler_exporter_circuit_state",
}
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "limit", "query_offset", "rules"}
SEVERITIES = {"critical", "warning", "info"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


# -- a collector that has seen everything -------------------------------------------------------


class _ZeroSpanIds(RandomIdGenerator):
    """A broken instrumentation: every span ID is zero, which OTLP calls invalid."""

    def generate_span_id(self) -> int:
        return 0


def _trace(client: SdkClient, *, error: bool = False, children: int = 3) -> str:
    with client.tracer.start_as_current_span("GET /checkout") as root:
        for i in range(children):
            with client.tracer.start_as_current_span(f"db-query {i}") as child:
                child.set_attribute("db.system", "postgresql")
                if error and i == children - 1:
                    child.set_status(Status(StatusCode.ERROR, "deadlock"))
        return f"{root.get_span_context().trace_id:032x}"


def _scrape(agent: AgentProcess) -> str:
    with urllib.request.urlopen(f"http://{agent.admin_endpoint}/metrics", timeout=5) as response:
        return response.read().decode()


def _wait_for(
    agent: AgentProcess, *series: str, timeout: float, what: str, resend: Callable[[], None] | None = None
) -> None:
    """Wait until every ``name{label="value"`` (a prefix of a sample line) is in a scrape;
    ``resend`` is called again every second meanwhile, for traffic that counts only once the
    collector is ready for it."""
    missing: list[str] = list(series)
    sent = [0.0]

    def seen() -> bool:
        if resend is not None and time.monotonic() - sent[0] > 1.0:
            resend()
            sent[0] = time.monotonic()
        text = _scrape(agent)
        missing[:] = [s for s in series if s not in text]
        return not missing

    try:
        wait_until(seen, timeout=timeout, message=what, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: no {missing}\n{agent.log()[-3000:]}") from None


def _local_config(tmp: Path, redis_url: str) -> dict[str, Any]:
    data = on_this_machine(
        yaml.safe_load(kubernetes_config_file().read_text()), url=redis_url, timeout="300ms", max_bytes=2000
    )
    # no wait after the root: the traces of the first requests are still buffered when the
    # second ones push the buffer over max_bytes, and the oldest are decided early (overflow)
    data["tail_sampling"].update(decision_wait="3s", decision_wait_after_root_received="0", maximum_trace_size_bytes=3000)
    data["exporters"] = [
        {"name": "file", "type": "file", "path": str(tmp / "kept.jsonl")},
        {  # a backend that is down: failed sends, retries, an open circuit, traces given up
            "name": "down", "type": "otlp", "endpoint": f"127.0.0.1:{free_port()}", "insecure": True,
            "timeout": "500ms",
            "retry_on_failure": {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "1s"},
            "circuit_breaker": {"failure_threshold": 1, "cooldown": "500ms"},
        },
    ]
    data["service"]["shutdown_timeout"] = "5s"
    return data


def _late_span(client: SdkClient, trace_id: str) -> None:
    with client.tracer.start_as_current_span("late retry", context=remote_parent(trace_id)):
        pass
    client.flush()


def _drive(agent: AgentProcess, redis_server: RedisProcess) -> None:
    grpc_client = SdkClient("grpc", agent.grpc_endpoint)
    http_client = SdkClient("http", agent.http_endpoint)
    try:
        errors = [_trace(client, error=True) for client in (grpc_client, http_client)]
        normal = [_trace(client) for client in (grpc_client, http_client) for _ in range(4)]
        grpc_client.flush()
        http_client.flush()
        # over max_bytes with the first traces still buffered, and one over maximum_trace_size_bytes
        normal += [_trace(client) for client in (grpc_client, http_client) for _ in range(4)]
        _trace(grpc_client, children=40)
        grpc_client.flush()
        http_client.flush()
        _wait_for(agent, 'tailsampler_traces_decided_total{decision="kept"', 'tailsampler_traces_decided_total{decision="dropped"',
                  'tailsampler_early_decisions_total{reason="overflow"', 'tailsampler_early_decisions_total{reason="size"',
                  "tailsampler_exporter_send_failures_total{", "tailsampler_exporter_traces_failed_total{",
                  timeout=30, what="kept, dropped and early-decided traces, and the down exporter's failures")
        # A span of a decided trace is late once its trace is settled: a kept one once every
        # exporter is done with it (here once the down exporter has given it up).
        _wait_for(agent, 'tailsampler_late_spans_total{decision="kept"', timeout=30, what="late spans of a kept trace",
                  resend=lambda: _late_span(grpc_client, errors[0]))
        _wait_for(agent, 'tailsampler_late_spans_total{decision="dropped"', timeout=30, what="late spans of a dropped trace",
                  resend=lambda: [_late_span(grpc_client, trace_id) for trace_id in normal[:3]])

        broken = TracerProvider(resource=Resource.create({"service.name": "broken"}), id_generator=_ZeroSpanIds())
        broken.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=agent.grpc_endpoint, insecure=True)))
        with broken.get_tracer("broken").start_as_current_span("no span id"):
            pass
        broken.shutdown()
        _wait_for(agent, 'tailsampler_spans_refused_total{reason="invalid_id"', timeout=15, what="invalid span IDs refused")

        redis_server.pause()
        try:
            _trace(grpc_client)
            _wait_for(agent, 'tailsampler_spans_refused_total{reason="buffer_unavailable"', "tailsampler_redis_unavailable_total{",
                      timeout=20, what="spans refused while Redis does not answer")
        finally:
            redis_server.resume()
    finally:
        grpc_client.shutdown()
        http_client.shutdown()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("deploy-metrics")
    redis_server = RedisProcess(tmp / "redis")
    agent = AgentProcess(_local_config(tmp, redis_server.url), tmp / "agent")
    try:
        agent.start()
        _drive(agent, redis_server)
        found = Exported()
        found.add_scrape(_scrape(agent))
        yield found
    finally:
        agent.stop()
        redis_server.stop()


# -- the dashboard ------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each variable's value as Grafana interpolates it: the "All" value of a multi-value one."""
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            values[variable["name"]] = variable["query"]
        elif variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
        else:
            values[variable["name"]] = variable["current"]["value"]
    return values


def _interpolate(text: str, values: dict[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"{where}: ${name} is not a variable of the dashboard"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expression, legend) of every panel target, variables interpolated."""
    dashboard = _dashboard()
    values = _variables(dashboard)
    return [
        (f"panel {panel['title']!r} target {target['refId']}", _interpolate(target["expr"], values, panel["title"]),
         target.get("legendFormat", ""))
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_reads_only_series_a_collector_exports(exported: Exported) -> None:
    usage = Usage(exported)
    for where, expr, legend in _dashboard_queries():
        labels = usage.check(expr, where)
        for label in LEGEND_LABEL.findall(legend):
            if label not in labels:
                usage.problems.append(f"{where}: legend {{{{{label}}}}} is not a label of the result ({sorted(labels)})")
    dashboard = _dashboard()
    values = _variables(dashboard)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        selector, label = match.groups()
        labels = usage.check(_interpolate(selector, values, variable["name"]), f"variable {variable['name']}")
        assert label in labels, f"variable {variable['name']}: {label} is not a label of {selector}"
    assert not usage.problems, "\n".join(usage.problems)
    assert DASHBOARD_METRICS <= usage.metrics, f"the dashboard does not show {sorted(DASHBOARD_METRICS - usage.metrics)}"


def test_the_dashboard_shows_each_agent_and_the_fleet(exported: Exported) -> None:
    usage = Usage(exported)
    results = [usage.check(expr, where) for where, expr, _ in _dashboard_queries()]
    per_agent = sum(1 for labels in results if "instance" in labels)
    fleet = sum(1 for labels in results if "instance" not in labels)
    assert per_agent >= 10 and fleet >= 10, f"{per_agent} queries per agent, {fleet} for the fleet"


def test_the_dashboard_is_a_grafana_dashboard_on_its_own_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["current"]["value"] == JOB
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{panel['title']}: {grid}"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} says nothing about what it shows"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"{panel['title']}: refIds {refs}"
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"]), panel["title"]
    cells = [(x, y) for p in panels for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
             for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"


# -- the alert rules ----------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_read_only_series_a_collector_exports(exported: Exported) -> None:
    usage = Usage(exported)
    for rule in _rules():
        where = f"alert {rule['alert']}"
        labels = usage.check(rule["expr"], where)
        templates = " ".join([*rule.get("annotations", {}).values(), *rule.get("labels", {}).values()])
        for label in TEMPLATE_LABEL.findall(templates):
            if label not in labels:
                usage.problems.append(f"{where}: $labels.{label} is not a label of its result ({sorted(labels)})")
    assert not usage.problems, "\n".join(usage.problems)
    assert ALERT_METRICS <= usage.metrics, f"no alert watches {sorted(ALERT_METRICS - usage.metrics)}"


def _selectors(expr: str) -> list[promql.VectorSelector]:
    found: list[promql.VectorSelector] = []
    promql.walk(promql.parse(expr), lambda node: found.append(node) if isinstance(node, promql.VectorSelector) else None)
    return found


def test_alert_rules_pass_promtool_style_checks() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}, f"unexpected top-level keys {set(document) - {'groups'}}"
    group_names = [group["name"] for group in document["groups"]]
    assert len(group_names) == len(set(group_names)), f"group names repeat: {group_names}"
    names: list[str] = []
    for group in document["groups"]:
        assert set(group) <= GROUP_KEYS, f"group {group['name']}: unknown keys {set(group) - GROUP_KEYS}"
        for rule in group["rules"]:
            name = rule.get("alert")
            assert name and "record" not in rule, f"every rule here is an alert: {rule}"
            assert set(rule) <= RULE_KEYS, f"{name}: unknown keys {set(rule) - RULE_KEYS}"
            assert LABEL_NAME.fullmatch(name), f"{name}: not a valid alert name"
            names.append(name)
            tree = promql.parse(rule["expr"])  # raises with the position of a syntax error
            assert not isinstance(tree, promql.NumberLiteral), f"{name}: a constant expression never fires per series"
            assert promql.parse_duration(rule["for"]).total_seconds() > 0, f"{name}: fires on one bad evaluation"
            labels = rule["labels"]
            assert all(LABEL_NAME.fullmatch(key) and isinstance(value, str) for key, value in labels.items()), labels
            assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
            annotations = rule["annotations"]
            assert {"summary", "description"} <= set(annotations), f"{name}: needs summary and description"
            for text in annotations.values():
                assert text.count("{{") == text.count("}}"), f"{name}: unbalanced template in {text!r}"
            for selector in _selectors(rule["expr"]):
                for matcher in selector.matchers.matchers:
                    if matcher.name == "job":
                        assert matcher.value == JOB, f"{name}: job {matcher.value!r}, but the agents are scraped as {JOB!r}"
    assert len(names) == len(set(names)), f"alert names repeat: {names}"


def test_the_buffer_alert_warns_at_the_shipped_bounds() -> None:
    """Until the collector exports its bounds, the alert carries them: they must be the configs'."""
    rule = next(rule for rule in _rules() if rule["alert"] == "TailsamplerBufferNearFull")
    found = numbers(rule["expr"])
    for config in (compose_agent_config(), load_config(kubernetes_config_file())):
        assert config.buffer.max_bytes in found, f"buffer.max_bytes {config.buffer.max_bytes} is not in {found}"
        assert config.tail_sampling.num_traces in found, f"num_traces {config.tail_sampling.num_traces} is not in {found}"
