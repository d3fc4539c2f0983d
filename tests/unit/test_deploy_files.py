"""The deployment files hold together: compose, Dockerfile, Mosquitto, Prometheus and Grafana.

There is no container engine in the test environment, so these tests read the files: every
path a service mounts exists (or is one the operator makes, and the docs say how), the images
are the public ones, no secret is written down, the Dockerfile builds a slim non-root image
with a health check that works against the real API, and every metric and label the Grafana
dashboard queries is one the engine exports.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from adapters.sim import SimAdapter
from tests.brokers import free_port
from vpp.clock import AcceleratedClock
from vpp.config import load_park
from vpp.engine import Engine, EngineOptions
from vpp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vpp-engine.json"
DOCS = ROOT / "docs" / "deployment.md"
MOSQUITTO_README = DEPLOY / "mosquitto" / "README.md"
ENGINE_COMMAND = ["vpp", "run", "--config", "/config/park.yaml", "--listen", "0.0.0.0:8080"]
# Made on the host before the first start (secrets and certificates are never committed).
OPERATOR_MADE = {DEPLOY / "mosquitto" / "certs" / "ca.crt"}
PROMETHEUS_TARGET_LABELS = {"job", "instance", "shard", "park"}


def interpolate(text: str) -> str:
    """Compose's variable syntax: defaults are taken, required variables become <NAME>."""

    def replace(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if operator in (":-", "-"):
            return rest
        return f"<{name}>"

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?([^}]*)\}", replace, text)
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@dataclass(frozen=True, slots=True)
class Mount:
    service: str
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))

    @property
    def host_path(self) -> Path:
        return (DEPLOY / self.source).resolve()


def mounts(compose: dict[str, Any]) -> Iterator[Mount]:
    for name, service in services(compose).items():
        for entry in service.get("volumes", []):
            assert isinstance(entry, str), f"{name}: use the short volume syntax"
            parts = interpolate(entry).split(":")
            assert len(parts) in (2, 3), entry
            yield Mount(name, parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")


def mount_of(compose: dict[str, Any], service: str, target: str) -> Mount:
    found = [m for m in mounts(compose) if m.service == service and m.target == target]
    assert len(found) == 1, f"{service} mounts nothing at {target}"
    return found[0]


# --- compose -----------------------------------------------------------------------------------


def test_compose_runs_every_part_from_public_images(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert {"engine", "mosquitto", "timescaledb", "prometheus", "grafana"} <= set(svc)
    assert svc["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert svc["timescaledb"]["image"] == "timescale/timescaledb:latest-pg16"
    assert svc["timescale-setup"]["image"] == svc["timescaledb"]["image"]
    assert re.fullmatch(r"prom/prometheus(:v\d+\.\d+\.\d+)?", svc["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana(:\d+\.\d+\.\d+)?", svc["grafana"]["image"])
    build = svc["engine"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    for name, service in svc.items():
        assert ("build" in service) == (name == "engine"), name
        assert "image" in service, name


def test_every_mounted_path_exists_or_is_documented(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    binds = 0
    documented = MOSQUITTO_README.read_text() + DOCS.read_text()
    for mount in mounts(compose):
        if not mount.is_bind:
            assert mount.source in declared, f"{mount.service}: undeclared volume {mount.source}"
            continue
        binds += 1
        assert mount.read_only, f"{mount.service}: {mount.source} should be mounted read-only"
        if mount.host_path in OPERATOR_MADE:
            relative = mount.host_path.relative_to(DEPLOY).as_posix()
            assert relative in documented, f"the docs do not say how to make {relative}"
        else:
            assert mount.host_path.exists(), f"{mount.service}: {mount.source} does not exist"
    assert binds >= 6


def test_the_engine_service_runs_the_image_command_with_its_database(
    compose: dict[str, Any],
) -> None:
    engine = services(compose)["engine"]
    command = engine["command"]
    assert command[0] == "vpp"
    run = command.index("run")
    assert command[run : run + 5] == ENGINE_COMMAND[1:]  # the image's command, then options
    store = command[command.index("--store") + 1]
    host = store.removeprefix("postgresql://").split("/")[0]
    assert ":" not in host.split("@")[0], "the database password belongs in PGPASSWORD"
    assert host.split("@")[1] == "timescaledb:5432"
    assert "PGPASSWORD" in engine["environment"]
    config = mount_of(compose, "engine", "/config")
    assert (config.host_path / "park.yaml").is_file()
    assert (config.host_path / "markets").is_dir()
    assert any(p.endswith(":8080:8080") for p in map(interpolate, engine["ports"]))
    assert engine["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert engine["read_only"] is True
    assert engine["cap_drop"] == ["ALL"]


def test_compose_writes_no_secret_down(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in services(compose).items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key, value in environment.items():
            if re.search(r"PASSWORD|TOKEN|SECRET|KEY", key):
                checked += 1
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:[-?][^}]*)?\}", str(value)), (
                    f"{name}: {key} must come from the environment, not the file"
                )
    assert checked >= 6
    # the secrets the services need are required, not silently empty
    text = COMPOSE.read_text()
    for variable in ("VPP_API_TOKENS", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{variable}:?" in text


def test_the_hypertable_statement_is_the_documented_one(compose: dict[str, Any]) -> None:
    script = services(compose)["timescale-setup"]["command"][0]
    statement = re.search(r"SELECT create_hypertable\([^)]*\)", script)
    assert statement is not None
    assert "'telemetry', 'ts_ms'" in statement.group(0)
    assert "chunk_time_interval => 86400000" in statement.group(0)  # one day in ms
    assert statement.group(0) in DOCS.read_text()


def test_every_required_variable_is_documented(compose: dict[str, Any]) -> None:
    variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    docs = DOCS.read_text()
    missing = sorted(v for v in variables if v not in docs)
    assert missing == []


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    argument: str


def dockerfile_stages() -> list[list[Instruction]]:
    """Instructions per build stage, continuation lines joined, ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        argument = " ".join(argument.split())
        if keyword == "ARG" and "=" in argument and not stages:
            name, _, default = argument.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            argument = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), argument)
            stages.append([])
        assert stages, f"{keyword} before FROM"
        stages[-1].append(Instruction(keyword, argument))
    return stages


def first(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the stage"
    return found[-1]


def test_the_image_is_slim_and_runs_as_an_unprivileged_user() -> None:
    stages = dockerfile_stages()
    for stage in stages:
        image = first(stage, "FROM").argument.split()[0]
        assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?", image), image
    final = stages[-1]
    user = first(final, "USER").argument.split(":")[0]
    assert user not in ("root", "0")
    keywords = [i.keyword for i in final]
    assert keywords.index("USER") < keywords.index("CMD")
    assert "groupadd --system --gid 10001 vpp" in first(final, "RUN").argument
    assert first(final, "EXPOSE").argument == "8080"


def test_the_image_command_and_health_check() -> None:
    final = dockerfile_stages()[-1]
    assert json.loads(first(final, "CMD").argument) == ENGINE_COMMAND
    health = first(final, "HEALTHCHECK").argument
    assert "--interval=" in health and "--start-period=" in health
    exec_form = json.loads(health[health.index("CMD") + 3 :])
    assert exec_form[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in exec_form[2]


def test_the_image_installs_the_whole_distribution_with_pip() -> None:
    build = dockerfile_stages()[0]
    copied = {i.argument.split()[0] for i in build if i.keyword == "COPY"} | {
        part for i in build if i.keyword == "COPY" for part in i.argument.split()[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= copied
    installs = [i.argument for i in build if i.keyword == "RUN" and "pip install" in i.argument]
    assert any('pip install ".[distributed]"' in argument for argument in installs)
    assert "distributed" in pyproject["project"]["optional-dependencies"]
    for stage in dockerfile_stages():
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from" not in instruction.argument:
                for source in instruction.argument.split()[:-1]:
                    assert (ROOT / source).exists(), source


def test_dockerignore_keeps_secrets_and_clutter_out_but_not_the_sources() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "*.db", ".env", "**/.env"} <= ignored
    for stage in dockerfile_stages():
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from" not in instruction.argument:
                for source in instruction.argument.split()[:-1]:
                    assert source not in ignored


async def test_the_health_check_command_passes_against_the_running_api() -> None:
    final = dockerfile_stages()[-1]
    health = first(final, "HEALTHCHECK").argument
    command = json.loads(health[health.index("CMD") + 3 :])
    port = free_port()
    probe = [sys.executable, "-c", command[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")]
    loaded = load_park(ROOT / "tests/fixtures/small_park.yaml", ROOT / "config/markets")
    clock = AcceleratedClock(datetime(2026, 7, 15, 3, 0, tzinfo=UTC), 1.0)
    engine = Engine(
        loaded,
        clock,
        [SimAdapter.from_park(loaded.park, clock, seed=1)],
        options=EngineOptions(control=False, serve_api=True, listen=f"127.0.0.1:{port}"),
    )
    before = await asyncio.to_thread(subprocess.run, probe, capture_output=True, check=False)
    assert before.returncode != 0  # nothing listens yet: unhealthy
    runner = asyncio.create_task(engine.run(), name="engine")
    try:
        async with asyncio.timeout(10):
            while engine.address is None:  # noqa: ASYNC110  (set by the engine's task)
                await asyncio.sleep(0.02)
        during = await asyncio.to_thread(subprocess.run, probe, capture_output=True, check=False)
    finally:
        engine.stop()
        await runner
    assert during.returncode == 0, during.stderr.decode()


# --- Mosquitto -------------------------------------------------------------------------------


def mosquitto_settings() -> list[tuple[str, str]]:
    lines = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    pairs = []
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def test_the_broker_needs_tls_and_a_password_and_applies_the_acl(
    compose: dict[str, Any],
) -> None:
    settings = mosquitto_settings()
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["allow_anonymous"] == ["false"]
    assert values["listener"] == ["8883"]  # one listener, and it is the TLS one
    for key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
        assert len(values[key]) == 1, key
    config = mount_of(compose, "mosquitto", "/mosquitto/config")
    assert config.host_path == DEPLOY / "mosquitto"
    documented = MOSQUITTO_README.read_text()
    for key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
        path = values[key][0]
        assert path.startswith("/mosquitto/config/"), path
        relative = path.removeprefix("/mosquitto/config/")
        on_host = config.host_path / relative
        assert on_host.exists() or relative in documented, (
            f"{relative}: neither here nor documented"
        )
    assert (config.host_path / "acl").is_file()
    assert values["persistence_location"] == ["/mosquitto/data/"]
    assert mount_of(compose, "mosquitto", "/mosquitto/data").source == "mosquitto-data"
    ports = [interpolate(p) for p in services(compose)["mosquitto"]["ports"]]
    assert [p.rsplit(":", 2)[-2:] for p in ports] == [["8883", "8883"]]


def test_the_acl_confines_enterprises_by_username_and_names_the_engine() -> None:
    rules = [
        line.split()
        for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == ["user", "_engine"]
    patterns = [r for r in rules if r[0] == "pattern"]
    assert all(r[2].startswith(("vpp/%u/", "vpp/_engine/")) for r in patterns), patterns
    writes = {r[2] for r in patterns if r[1] == "write"}
    assert writes == {f"vpp/%u/+/{leaf}" for leaf in ("telemetry", "batch", "status", "ack")}
    # no rule lets every account read or write everything
    assert not any(r[0] in ("topic", "pattern") and r[-1] in ("#", "vpp/#") for r in rules[2:])


# --- Prometheus and Grafana --------------------------------------------------------------------


def engine_port(compose: dict[str, Any]) -> int:
    command = services(compose)["engine"]["command"]
    return int(command[command.index("--listen") + 1].rsplit(":", 1)[1])


def test_prometheus_scrapes_the_engine_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "vpp-engine"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"engine:{engine_port(compose)}"]
    # the dashboard's "engine up" panel asks for this job by name
    jobs = {j for _, expr in dashboard_targets() for j in re.findall(r'job="([^"]+)"', expr)}
    assert jobs == {job["job_name"]}
    mount = mount_of(compose, "prometheus", "/etc/prometheus/prometheus.yml")
    assert mount.host_path == DEPLOY / "prometheus" / "prometheus.yml"
    assert (
        "--config.file=/etc/prometheus/prometheus.yml" in services(compose)["prometheus"]["command"]
    )


def grafana_datasource() -> dict[str, Any]:
    path = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    assert isinstance(source, dict)
    return source


def test_grafana_provisions_prometheus_and_the_dashboard_folder(compose: dict[str, Any]) -> None:
    source = grafana_datasource()
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services(compose)
    provisioning = mount_of(compose, "grafana", "/etc/grafana/provisioning")
    assert provisioning.host_path == DEPLOY / "grafana" / "provisioning"
    path = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = mount_of(compose, "grafana", folder)
    assert (dashboards.host_path / DASHBOARD.name).is_file()
    home = services(compose)["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"


@dataclass(frozen=True, slots=True)
class Exported:
    """A metric the engine exports: its sample names and its labels."""

    kind: str
    samples: frozenset[str]
    labels: frozenset[str]


def exported_metrics() -> dict[str, Exported]:
    """From a fresh `Metrics`: each family's sample names (by type) and label names."""
    metrics = Metrics()
    labels = {
        wrapper._name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {}
    for family in metrics.registry.collect():
        samples = frozenset(family.name + suffix for suffix in suffixes[family.type])
        exported[family.name] = Exported(family.type, samples, labels[family.name])
    return exported


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def test_every_dashboard_metric_and_label_is_exported_by_the_engine() -> None:
    exported = exported_metrics()
    by_sample = {s: e for e in exported.values() for s in e.samples}
    used: set[str] = set()
    for title, expr in dashboard_targets():
        names = set(re.findall(r"\bvpp_[a-z0-9_]+", expr))
        unknown = sorted(n for n in names if n not in by_sample)
        assert unknown == [], f"{title}: {unknown} not in vpp.metrics.Metrics"
        used |= names
        allowed = set(PROMETHEUS_TARGET_LABELS)
        for name in names:
            allowed |= by_sample[name].labels | ({"le"} if name.endswith("_bucket") else set())
        for selector_labels in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector_labels):
                assert label in allowed, f"{title}: label {label} on {sorted(names)}"
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert label in allowed, f"{title}: grouping by {label} on {sorted(names)}"
    assert len(used) >= 20


@pytest.mark.parametrize(
    "metric",
    [
        "vpp_tracking_error_kw",
        "vpp_tracking_error_ratio",
        "vpp_control_cycle_duration_seconds_bucket",
        "vpp_setpoints_sent_total",
        "vpp_setpoints_acked_total",
        "vpp_setpoints_refused_total",
        "vpp_setpoints_expired_total",
        "vpp_assets",
        "vpp_telemetry_received_total",
        "vpp_telemetry_rejected_total",
        "vpp_adapter_connected",
        "vpp_message_latency_seconds_bucket",
        "vpp_solver_duration_seconds_bucket",
        "vpp_solver_runs_total",
        "vpp_storage_rows_written_total",
        "vpp_storage_errors_total",
    ],
)
def test_the_dashboard_shows(metric: str) -> None:
    assert any(re.search(rf"\b{metric}\b", expr) for _, expr in dashboard_targets())


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    uid = grafana_datasource()["uid"]
    assert board["uid"] == "vpp-engine"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    # panels do not overlap
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (area & cells), panel["title"]
        cells |= area
    (variable,) = board["templating"]["list"]
    assert variable["datasource"]["uid"] == uid
    assert "vpp_adapter_connected" in variable["query"]["query"]


def test_the_shell_in_the_setup_service_is_valid(compose: dict[str, Any]) -> None:
    script = services(compose)["timescale-setup"]["command"][0]
    assert services(compose)["timescale-setup"]["entrypoint"] == ["/bin/sh", "-c"]
    checked = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr.decode()
    assert shlex.split(script.splitlines()[-1])[0] == "psql"
