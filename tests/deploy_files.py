"""The deployment files, read the way their tools read them: the Dockerfile by dockerfile-parse,
the compose file and the Kubernetes manifests by PyYAML (kustomizations followed as kustomize
follows them), the rules and the dashboard as Prometheus and Grafana load them.

Nothing here runs Docker, kustomize or Kubernetes: the tests cross-check what these files say
against each other and against what the collector reads and serves.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import yaml
from dockerfile_parse import DockerfileParser

from tailsampler.collector.config import Config, load_config
from tailsampler.loadgen.processes import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILE = REPO / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "tailsampler.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"

# The collector's confmap references, ${env:NAME} and ${env:NAME:-default}
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
# The scrape job the alerts, the dashboard and both Prometheus set-ups agree on
JOB = "tailsampler"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def listeners(config: Config) -> dict[str, tuple[str, int]]:
    """The config's listen addresses by role: grpc, http, admin."""
    otlp = config.receivers.otlp
    endpoints = {"admin": config.admin.endpoint, "grpc": otlp.grpc and otlp.grpc.endpoint, "http": otlp.http and otlp.http.endpoint}
    return {role: (e.listen_host, e.port) for role, e in endpoints.items() if e}


def on_this_machine(data: dict[str, Any], **buffer: Any) -> dict[str, Any]:
    """A shipped config (as YAML data) with its listeners moved to free loopback ports and the
    given buffer keys replaced, so that it runs on this machine as it is otherwise."""
    data = copy.deepcopy(data)
    otlp = data["receivers"]["otlp"]
    for protocol in ("grpc", "http"):
        otlp[protocol]["endpoint"] = f"127.0.0.1:{free_port()}"
    data["admin"]["endpoint"] = f"127.0.0.1:{free_port()}"
    data["buffer"].update(buffer)
    return data


def host_port(address: str) -> tuple[str, int]:
    """``host:port`` or a URL's network location, as (host, port)."""
    netloc = address.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.rpartition(":")
    return host, int(port)


# -- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` of a multi-stage Dockerfile and the instructions under it."""

    base: str
    name: str | None
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]

    def last(self, instruction: str) -> str:
        found = self.values(instruction)
        assert found, f"stage {self.name or self.base} has no {instruction}"
        return found[-1]

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        """Each COPY as (sources, destination, flags); ``--from`` copies included."""
        out = []
        for value in self.values("COPY") + self.values("ADD"):
            words = shlex.split(value)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            out.append((paths[:-1], paths[-1], flags))
        return out


@cache
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(REPO / "Dockerfile"))


def stages() -> list[Stage]:
    parser = dockerfile()
    bases = iter(parser.parent_images)  # with the ARG defaults substituted
    found: list[Stage] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(next(bases), name))
        elif found and instruction["instruction"] != "COMMENT":
            found[-1].instructions.append(instruction)
    return found


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form; a shell-form string fails here."""
    try:
        words = json.loads(value)
    except json.JSONDecodeError:
        raise AssertionError(f"not in exec form (a JSON array): {value!r}") from None
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), value
    return words


def healthcheck_command(stage: Stage) -> list[str]:
    """The HEALTHCHECK's command, its options (--interval=...) put aside."""
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.*)", stage.last("HEALTHCHECK"), re.S)
    assert match, f"HEALTHCHECK without CMD: {stage.last('HEALTHCHECK')!r}"
    return exec_form(match.group(2))


def image_config_path() -> str:
    """The config file the image's CMD serves."""
    command = exec_form(stages()[-1].last("CMD"))
    return command[command.index("--config") + 1]


# -- docker-compose.yml -------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts, container path -> file in the repository."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    return mounts


def built_here(service: dict[str, Any]) -> bool:
    """The service's image is built from this repository's Dockerfile."""
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (COMPOSE_FILE.parent / context / dockerfile_name).resolve() == REPO / "Dockerfile"


def compose_agents() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if built_here(service)}


def mounted_config(service: dict[str, Any]) -> Path:
    """The file a compose agent serves: the one mounted over the image's config path."""
    mounts = bind_mounts(service)
    path = image_config_path()
    assert path in mounts, f"nothing is mounted at the image's config path {path}"
    return mounts[path]


def compose_agent_config() -> Config:
    configs = {mounted_config(service) for service in compose_agents().values()}
    assert len(configs) == 1, f"the compose agents serve different configs: {configs}"
    return load_config(configs.pop())


def server_args(words: list[str]) -> dict[str, str]:
    """``valkey-server --key value ...`` as {key: value}."""
    options = [w for w in words if w not in ("valkey-server", "redis-server")]
    assert len(options) % 2 == 0 and all(o.startswith("--") for o in options[::2]), options
    return {key[2:]: value for key, value in zip(options[::2], options[1::2])}


# -- Kubernetes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}[{self.index}] {self.kind}/{self.name}"


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def kustomize_files(directory: Path = KUBERNETES) -> Iterator[Path]:
    """Every manifest file the kustomization in ``directory`` includes, following directories."""
    for resource in kustomization(directory).get("resources", []):
        path = (directory / resource).resolve()
        assert path.exists(), f"{directory / 'kustomization.yaml'}: resource {resource} does not exist"
        if path.is_dir():
            yield from kustomize_files(path)
        else:
            yield path


@cache
def manifests() -> tuple[Manifest, ...]:
    found = []
    for path in kustomize_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append(Manifest(path, index, doc))
    return tuple(found)


def manifest(kind: str, name: str) -> dict[str, Any]:
    matches = [m.doc for m in manifests() if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [m.doc for m in manifests() if m.kind == kind]


def generated_config_maps() -> dict[str, dict[str, Any]]:
    """The ConfigMaps kustomize's configMapGenerator makes, as kustomize writes them
    (before it appends the content hash to the name and to every reference)."""
    made = {}
    for generator in kustomization(KUBERNETES).get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, file = entry.rpartition("=")
            path = KUBERNETES / file
            data[key or path.name] = path.read_text()
        made[generator["name"]] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": data,
        }
    return made


def kubernetes_config_file() -> Path:
    """The agents' config file: the ConfigMap key at the path the container serves."""
    container = agent_container()
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    pod = manifest("Deployment", "tailsampler")["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    generator = next(g for g in kustomization(KUBERNETES)["configMapGenerator"] if g["name"] == volume["configMap"]["name"])
    for entry in generator["files"]:
        key, _, file = entry.rpartition("=")
        if (key or Path(file).name) == config_path.name:
            return KUBERNETES / file
    raise AssertionError(f"no key {config_path.name} in ConfigMap {generator['name']}")


def agent_container() -> dict[str, Any]:
    containers = manifest("Deployment", "tailsampler")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tailsampler")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels form, or the bare map of a Service) matches ``labels``."""
    wanted = selector.get("matchLabels", selector) if "matchExpressions" not in selector else None
    assert wanted is not None, "matchExpressions are not used by these manifests"
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in container["ports"]), port
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"container {container['name']} has no port named {port}"
    return named[0]
