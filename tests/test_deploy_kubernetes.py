"""The Kubernetes manifests under deploy/kubernetes, checked without a cluster: every manifest the
kustomization includes validates against the Kubernetes schemas (kubernetes-validate, strict:
unknown fields are errors), the ServiceMonitor against the operator's shape, and the manifests
agree with each other and with the collector: the ConfigMap's config passes the collector's own
loader, the probes, ports and paths are the ones a collector started from that config serves, and
every ``${env:NAME}`` it reads is set from the Secret.
"""

from __future__ import annotations

from typing import Any, Iterator

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tailsampler.collector.config import load_config, parse_config
from tests.collectors import StartCollector
from tests.deploy_files import (
    ENV_REFERENCE, JOB, KUBERNETES, agent_container, container_port, generated_config_maps, host_port, image_config_path,
    kubernetes_config_file, kustomization, kustomize_files, listeners, manifest, manifests, of_kind,
    on_this_machine, pyproject, selects, server_args, stages,
)

# The oldest Kubernetes these manifests are for, and the newest kubernetes-validate knows.
VERSIONS = ("1.29", kubernetes_validate.latest_version())
CUSTOM_KINDS = {"monitoring.coreos.com/v1": {"ServiceMonitor"}}

# The part of the Prometheus operator's ServiceMonitor CRD (monitoring.coreos.com/v1) that these
# manifests may use; anything else is an error, as a misspelt key would be ignored by the operator.
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STRINGS, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                            "authorization": {"type": "object"},
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def _custom(doc: dict[str, Any]) -> bool:
    return doc["kind"] in CUSTOM_KINDS.get(doc["apiVersion"], set())


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _pod(kind: str, name: str) -> dict[str, Any]:
    return manifest(kind, name)["spec"]["template"]


def _agent_config_data() -> dict[str, Any]:
    return yaml.safe_load(kubernetes_config_file().read_text())


def _secret_keys(name: str) -> set[str]:
    secret = manifest("Secret", name)
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def test_every_file_is_part_of_the_kustomization() -> None:
    included = set(kustomize_files())
    generated = {
        (KUBERNETES / entry.rpartition("=")[2]).resolve()
        for generator in kustomization(KUBERNETES).get("configMapGenerator", [])
        for entry in generator["files"]
    }
    for path in KUBERNETES.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in included | generated, f"{path} is in no kustomization"
    for image in kustomization(KUBERNETES)["images"]:
        assert any(c["image"] == image["name"] for m in of_kind("Deployment") for c in m["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    problems = []
    documents = [(str(m), m.doc) for m in manifests() if not _custom(m.doc)]
    documents += [(f"configMapGenerator {name}", doc) for name, doc in generated_config_maps().items()]
    for where, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.absolute_path))}: {exc.message}")
    assert not problems, "\n".join(problems)
    kinds = {m.kind for m in manifests()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret", "StatefulSet"} <= kinds


def test_the_service_monitor_scrapes_every_agent_as_the_alerts_job() -> None:
    (monitor,) = of_kind("ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    services = [s for s in of_kind("Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert len(services) == 1, f"the ServiceMonitor selects {[s['metadata']['name'] for s in services]}"
    (service,) = services
    assert service["spec"].get("clusterIP") == "None", "a headless Service: one target per agent"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    assert selects(service["spec"]["selector"], _pod("Deployment", "tailsampler")["metadata"]["labels"])
    admin_port = listeners(load_config(kubernetes_config_file()))["admin"][1]
    for endpoint in monitor["spec"]["endpoints"]:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert container_port(agent_container(), port["targetPort"]) == admin_port
        assert endpoint["path"] == "/metrics"


def test_the_configmap_holds_a_config_the_collector_accepts() -> None:
    path = kubernetes_config_file()
    (config_map,) = [c for c in generated_config_maps().values() if path.name in c["data"]]
    config = parse_config(config_map["data"][path.name], str(path))
    assert config.buffer.type == "redis", "stateless agents: the buffer is shared"
    for role, (host, _) in listeners(config).items():
        assert host == "0.0.0.0", f"{role} binds {host}: the Service could not reach it"


def test_every_env_reference_is_set_from_the_secret() -> None:
    referenced = {name for text in _strings(_agent_config_data()) for name in ENV_REFERENCE.findall(text)}
    assert referenced, "the config takes its Redis password and token from the environment"
    env = {e["name"]: e for e in agent_container()["env"]}
    assert set(env) == referenced, f"the container sets {sorted(env)}, the config reads {sorted(referenced)}"
    for name, entry in env.items():
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["key"] in _secret_keys(ref["name"]), f"{name}: Secret {ref['name']} has no key {ref['key']}"


async def test_probes_ports_and_paths_are_what_the_collector_serves(
    start_collector: StartCollector, clean_redis_url: str
) -> None:
    container = agent_container()
    config = load_config(kubernetes_config_file())
    ports = listeners(config)
    assert container_port(container, container["livenessProbe"]["httpGet"]["port"]) == ports["admin"][1]
    assert container_port(container, container["readinessProbe"]["httpGet"]["port"]) == ports["admin"][1]
    (otlp,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "tailsampler"]
    served = {container_port(container, p["targetPort"]): p["port"] for p in otlp["spec"]["ports"]}
    assert served == {ports["grpc"][1]: 4317, ports["http"][1]: 4318}, served
    assert selects(otlp["spec"]["selector"], _pod("Deployment", "tailsampler")["metadata"]["labels"])

    collector = await start_collector(on_this_machine(_agent_config_data(), url=clean_redis_url))
    paths = [container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]]
    paths += [e["path"] for m in of_kind("ServiceMonitor") for e in m["spec"]["endpoints"]]
    assert paths[:2] == ["/health", "/health/ready"]
    async with aiohttp.ClientSession() as session:
        for path in paths:
            async with session.get(f"http://127.0.0.1:{collector.admin.port}{path}") as response:
                assert response.status == 200, f"{path}: {response.status} {await response.text()}"


def test_selectors_budgets_and_autoscaling_cover_the_agents() -> None:
    deployment = manifest("Deployment", "tailsampler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)
    (budget,) = of_kind("PodDisruptionBudget")
    assert selects(budget["spec"]["selector"], labels)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], labels)
    (autoscaler,) = of_kind("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tailsampler")
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in agent_container()["resources"]["requests"], "CPU utilization is measured against the request"
    assert autoscaler["spec"]["minReplicas"] >= 2 and budget["spec"]["maxUnavailable"] == 1


def test_the_grace_period_outlasts_the_shutdown() -> None:
    pod = _pod("Deployment", "tailsampler")["spec"]
    shutdown = float(load_config(kubernetes_config_file()).service.shutdown_timeout)
    command = agent_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + shutdown


def test_the_agents_run_the_image_as_its_user() -> None:
    pod = _pod("Deployment", "tailsampler")["spec"]
    uid = int(stages()[-1].last("USER").partition(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    assert pod["automountServiceAccountToken"] is False
    context = agent_container()["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    (image,) = kustomization(KUBERNETES)["images"]
    assert image["newTag"] == pyproject()["project"]["version"]
    config_path = agent_container()["args"][agent_container()["args"].index("--config") + 1]
    assert config_path == image_config_path(), "the same config path as the image's CMD"


def test_the_trial_redis_is_the_configured_buffer_and_keeps_acknowledged_writes() -> None:
    config = load_config(kubernetes_config_file())
    host, port = host_port(config.buffer.url)
    service = manifest("Service", host)
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    statefulset = manifest("StatefulSet", host)
    pod = statefulset["spec"]["template"]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    (redis,) = pod["spec"]["containers"]
    assert container_port(redis, service_port["targetPort"]) == 6379
    options = server_args(redis["command"] + redis["args"])
    assert options["appendonly"] == "yes" and options["appendfsync"] == "always", options
    assert options["maxmemory-policy"] == "noeviction", "an evicting Redis drops buffered traces"
    assert any(m["mountPath"] == options["dir"] for m in redis["volumeMounts"]), "the append-only file is on the volume"
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in redis["volumeMounts"]} <= claims
    # the password Redis requires is the one the agents put in buffer.url
    assert options["requirepass"] == "$(REDIS_PASSWORD)"
    assert "${env:REDIS_PASSWORD}@" in _agent_config_data()["buffer"]["url"]
    redis_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    agent_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in agent_container()["env"]}
    assert redis_env["REDIS_PASSWORD"] == agent_env["REDIS_PASSWORD"]


def test_only_the_agents_reach_the_trial_redis() -> None:
    (policy,) = of_kind("NetworkPolicy")
    redis_pod = _pod("StatefulSet", "tailsampler-redis")
    assert selects(policy["spec"]["podSelector"], redis_pod["metadata"]["labels"])
    agent_labels = _pod("Deployment", "tailsampler")["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert all(selects(source["podSelector"], agent_labels) for source in rule["from"])
    (redis,) = redis_pod["spec"]["containers"]
    assert [container_port(redis, p["port"]) for p in rule["ports"]] == [6379]


def test_no_manifest_is_listed_twice() -> None:
    seen = [(m.kind, m.name) for m in manifests()]
    assert len(seen) == len(set(seen)), f"repeated manifests: {seen}"
