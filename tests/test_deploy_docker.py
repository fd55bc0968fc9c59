"""The Dockerfile and docker-compose.yml, checked without a Docker engine: they parse (dockerfile-parse,
the Compose Specification's JSON schema), everything they copy or mount exists and is in the
build context, the ports, paths and addresses they name are the ones the configs use, the image's
default config and health check work against a real collector, and it stops on SIGTERM in time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import jsonschema
import yaml
from docker.utils.build import exclude_paths

from tailsampler.collector.config import load_config
from tailsampler.common.durations import Duration
from tailsampler.storage import SqliteSpec
from tests.collectors import AgentProcess, StartCollector
from tests.deploy_files import (
    ALERTS, DASHBOARD, DEPLOY, JOB, REPO, bind_mounts, built_here, compose, compose_agent_config, compose_agents,
    dockerfile, exec_form, healthcheck_command, host_port, image_config_path, listeners,
    on_this_machine, pyproject, server_args, stages,
)

COMPILERS = ("gcc", "g++", "clang", "build-essential")


def _context() -> set[str]:
    """The files ``docker build .`` sends, by the Docker SDK's own reading of .dockerignore."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    return set(exclude_paths(str(REPO), [p for p in patterns if p and not p.startswith("#")]))


def _image_config() -> Path:
    """The repository file the image's CMD serves: the one copied to the CMD's --config path."""
    for sources, destination, flags in stages()[-1].copies():
        if "from" not in flags and destination == image_config_path():
            return REPO / sources[0]
    raise AssertionError(f"nothing is copied to the image's config path {image_config_path()}")


# -- Dockerfile ---------------------------------------------------------------------------------


def test_wheels_are_built_in_a_stage_with_a_compiler_and_the_runtime_has_none() -> None:
    builder, *_, runtime = stages()
    assert dockerfile().is_multistage and builder.name, "a named builder stage builds the wheels"
    assert builder.base == runtime.base, f"the wheels' ABI is the builder's Python: {builder.base} vs {runtime.base}"
    name, _, tag = runtime.base.partition(":")
    assert name == "python" and tag.endswith("-slim"), f"expected a slim Python base, got {runtime.base}"
    minimum = pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, tag.split("-")[0].split("."))) >= tuple(map(int, minimum.split("."))), tag
    builder_runs = " ".join(builder.values("RUN"))
    assert "gcc" in builder_runs.split() and "pip wheel" in builder_runs, builder_runs
    runtime_runs = " ".join(runtime.values("RUN")).split()
    assert not any(c in runtime_runs for c in COMPILERS), f"the runtime installs a compiler: {runtime_runs}"
    assert f"from={builder.name}" in " ".join(runtime.values("RUN")), "the runtime installs the builder's wheels"
    assert "--no-index" in runtime_runs, "the runtime installs the built wheels only, nothing from an index"


def test_everything_copied_exists_in_the_build_context() -> None:
    context = _context()
    for stage in stages():
        for sources, destination, flags in stage.copies():
            if "from" in flags:
                continue
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
                assert source in context, f"COPY {source}: left out of the build context by .dockerignore"
    assert not any(part.startswith((".venv", ".git/", "tests")) for part in context), "the context carries the work tree"
    assert not any("__pycache__" in path for path in context)


def test_the_builder_copies_all_the_package_is_built_from(tmp_path: Path) -> None:
    """Build the wheel from exactly the files the builder stage copies, as its ``pip wheel .`` does."""
    builder = stages()[0]
    project = pyproject()
    copied = tmp_path / "src"
    for sources, destination, _ in builder.copies():
        for source in sources:
            target = copied / destination / Path(source).name if destination.endswith("/") else copied / destination
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"), str(copied)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip wheel failed on the copied files:\n{result.stdout}\n{result.stderr}"
    (wheel,) = (tmp_path / "wheels").glob("tailsampler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        for source in (REPO / folder).rglob("*"):
            if source.suffix in (".py", ".lua") and "__pycache__" not in source.parts:
                packaged = package.replace(".", "/") + "/" + source.relative_to(REPO / folder).as_posix()
                assert packaged in names, f"{source.relative_to(REPO)} is not in the image's wheel"


def test_the_image_runs_as_a_fixed_non_root_user() -> None:
    runtime = stages()[-1]
    user, _, group = runtime.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {user}: a numeric non-root UID lets runAsNonRoot check it"
    assert not group or (group.isdigit() and int(group) != 0), f"group {group}"
    runs = " ".join(runtime.values("RUN"))
    assert f"--uid {user}" in runs, f"the image creates no user with UID {user}"


def test_the_default_config_listens_on_every_interface_and_stores_on_the_volume() -> None:
    runtime = stages()[-1]
    assert exec_form(runtime.last("ENTRYPOINT")) == ["tailsampler"]
    assert "tailsampler" in pyproject()["project"]["scripts"]
    path = _image_config()
    assert path.is_relative_to(DEPLOY), f"the image's config is a deploy/ file, not {path}"
    config = load_config(path)
    ports = listeners(config)
    for role, (host, _) in ports.items():
        assert host == "0.0.0.0", f"{role} binds {host}: unreachable from outside the container"
    exposed = {int(p.split("/")[0]) for value in runtime.values("EXPOSE") for p in value.split()}
    assert exposed == {port for _, port in ports.values()}, f"EXPOSE {exposed}, config {ports}"
    volumes = [Path(v) for value in runtime.values("VOLUME") for v in exec_form(value)]
    stores = [Path(spec.path) for spec in config.exporters if isinstance(spec, SqliteSpec)]
    assert stores and all(any(s.is_relative_to(v) for v in volumes) for s in stores), f"{stores} not on {volumes}"


def test_the_healthcheck_asks_health_on_the_admin_port() -> None:
    command = healthcheck_command(stages()[-1])
    assert command[:2] == ["python", "-c"], f"the slim image has no curl: {command}"
    url = next(word for word in command[2].split("'") if word.startswith("http://"))
    host, port = host_port(url)
    assert url.endswith("/health") and host == "127.0.0.1", url
    assert port == listeners(load_config(_image_config()))["admin"][1]


async def test_the_healthcheck_passes_on_a_live_collector_and_fails_on_a_gone_one(
    start_collector: StartCollector, tmp_path: Path
) -> None:
    data = on_this_machine(yaml.safe_load(_image_config().read_text()))
    data["exporters"] = [{"type": "sqlite", "path": str(tmp_path / "kept.db")}]
    collector = await start_collector(data)
    command = healthcheck_command(stages()[-1])
    _, image_port = host_port(next(w for w in command[2].split("'") if w.startswith("http://")))
    local = [sys.executable, "-c", command[2].replace(f":{image_port}/", f":{collector.admin.port}/")]
    alive = await asyncio.to_thread(subprocess.run, local, capture_output=True, timeout=30)
    assert alive.returncode == 0, alive.stderr.decode()
    await collector.stop()
    gone = await asyncio.to_thread(subprocess.run, local, capture_output=True, timeout=30)
    assert gone.returncode != 0, "the health check passed with nothing listening"


def test_sigterm_stops_the_default_config_within_its_shutdown_timeout(
    agent_process: Callable[[dict[str, Any]], AgentProcess], tmp_path: Path
) -> None:
    assert stages()[-1].values("STOPSIGNAL") in ([], ["SIGTERM"])
    data = on_this_machine(yaml.safe_load(_image_config().read_text()))
    data["exporters"][0]["path"] = str(tmp_path / "tailsampler.db")
    agent = agent_process(data).start()
    timeout = float(load_config(agent.config_path).service.shutdown_timeout)
    started = time.monotonic()
    agent.signal(15)
    assert agent.wait(timeout + 5) == 0, agent.log()
    assert time.monotonic() - started < timeout, "shutdown took longer than service.shutdown_timeout"


# -- docker-compose.yml -------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft202012Validator)


def test_everything_compose_mounts_exists() -> None:
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.is_relative_to(REPO), f"{name}: mounts {source} from outside the repository"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/")):
                assert source in compose().get("volumes", {}), f"{name}: named volume {source} is not declared"


def test_two_agents_run_one_image_with_the_compose_config() -> None:
    agents = compose_agents()
    assert len(agents) == 2, f"expected two agents built from the Dockerfile, found {sorted(agents)}"
    assert len({json.dumps(a["build"], sort_keys=True) for a in agents.values()}) == 1
    assert len({a.get("image") for a in agents.values()}) == 1, "both agents run one image"
    config = compose_agent_config()
    assert config.buffer.type == "redis", "agents of one fleet share the Redis buffer"
    ports = {port for _, port in listeners(config).values()}
    published: list[str] = []
    for name, agent in agents.items():
        mapped = {int(p.split(":")[-1]): p.split(":")[-2] for p in agent["ports"]}
        assert set(mapped) == ports, f"{name} publishes {sorted(mapped)}, the config listens on {sorted(ports)}"
        published += mapped.values()
    for name, service in compose()["services"].items():
        if name not in agents:
            published += [str(p).split(":")[-2] for p in service.get("ports", [])]
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"


def test_the_agents_reach_redis_and_jaeger_by_their_service_names() -> None:
    services = compose()["services"]
    config = compose_agent_config()
    redis_host, redis_port = host_port(config.buffer.url)
    assert redis_host in services and redis_port == 6379, config.buffer.url
    exporter_hosts = {host_port(spec.endpoint)[0] for spec in config.exporters}
    assert exporter_hosts <= set(services), f"exporters send to {exporter_hosts}"


def test_the_compose_redis_keeps_every_acknowledged_write() -> None:
    options = server_args(compose()["services"]["redis"]["command"])
    assert options["appendonly"] == "yes" and options["appendfsync"] == "always", options
    assert options["maxmemory-policy"] == "noeviction", "an evicting Redis drops buffered traces"
    assert any(v.endswith(":/data") for v in compose()["services"]["redis"]["volumes"]), "the append-only file is on a volume"


def test_agents_stop_within_their_grace_period() -> None:
    timeout = float(compose_agent_config().service.shutdown_timeout)
    for name, agent in compose_agents().items():
        grace = agent.get("stop_grace_period", "10s")  # compose's default
        assert Duration.parse(grace) > timeout, f"{name}: stop_grace_period {grace} is not longer than {timeout}s"


def test_start_up_waits_for_healthy_dependencies_with_checks_their_images_can_run() -> None:
    services = compose()["services"]
    image_check = healthcheck_command(stages()[-1])
    for name, service in services.items():
        check = service.get("healthcheck", {}).get("test")
        assert check or built_here(service), f"{name} has no health check"
        if check:
            assert check[0] in ("CMD", "CMD-SHELL"), f"{name}: {check}"
            assert "curl" not in " ".join(check), f"{name}: these images have no curl"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}: {condition}"
            assert "healthcheck" in services[dependency] or (built_here(services[dependency]) and image_check)


def test_prometheus_scrapes_both_agents_and_loads_the_alerts() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    settings = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    admin_port = listeners(compose_agent_config())["admin"][1]
    (job,) = settings["scrape_configs"]
    assert job["job_name"] == JOB
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{admin_port}" for name in compose_agents()}, targets
    for rule_file in settings["rule_files"]:
        assert mounts.get(rule_file) == ALERTS, f"rule file {rule_file} is not the mounted {ALERTS.name}"


def test_grafana_provisions_the_dashboard_and_its_prometheus() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    dashboard_target = next(target for target, source in mounts.items() if source == DASHBOARD)
    provisioning = mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tailsampler.yaml").read_text())["providers"]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"]), provider
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    host, port = host_port(prometheus["url"])
    assert host in services and str(port) in " ".join(services[host]["ports"]), prometheus["url"]
    assert "prometheus" in grafana["depends_on"]
