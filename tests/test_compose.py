"""docker-compose.yml and the Dockerfile configure the ledger with settings it actually reads.

PyYAML is not a dependency, so a small parser reads the block-style subset of YAML the compose file and the
files in deploy/ are written in (maps, `- item` lists whose items are scalars or maps, JSON-style flow lists,
quoted or plain scalars, comments), and refuses anything else rather than misreading it.

The monitoring profile is checked end to end on paper: Prometheus scrapes the ports the ledger and the agent
are told to serve on, Grafana reads that Prometheus and the dashboard where compose mounts it. (That every
query in the dashboard names a metric the service exports is checked against a real scrape, in
tests/service/test_metrics.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ledger.config import ENV_NAMES, load_settings
from ledger.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


# ---- a purpose-built reader for the compose file's YAML subset --------------------------------------------


def _strip_comment(line: str) -> str:
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)  # flow lists are written as JSON arrays
    if text[:1] in {"'", '"'}:
        if len(text) < 2 or text[-1] != text[0]:
            raise ValueError(f"unterminated quote: {text}")
        return text[1:-1]
    if text[:1] in {"{", "&", "*", "!", "|", ">"}:
        raise ValueError(f"YAML feature this reader does not support: {text}")
    return text


def parse_yaml(source: str) -> Any:
    lines = []
    for raw in source.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError("tabs in indentation")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip()), line.strip()))
    value, end = _block(lines, 0, 0)
    if end != len(lines):
        raise ValueError(f"unexpected line: {lines[end][1]}")
    return value


_KEY = re.compile(r"([\w.-]+|\"[^\"]+\"):(?:\s+(.*))?")


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item = lines[i][1][2:]
            if _KEY.fullmatch(item):  # `- key: value`: a map whose keys line up two columns in
                lines[i] = (indent + 2, item)
                nested, i = _block(lines, i, indent + 2)
                items.append(nested)
            else:
                items.append(_scalar(item))
                i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        match = _KEY.fullmatch(lines[i][1])
        if not match:
            raise ValueError(f"not a `key: value` line: {lines[i][1]}")
        key = match.group(1).strip('"')
        if key in mapping:
            raise ValueError(f"duplicate key {key}")
        i += 1
        if match.group(2) is not None:
            mapping[key] = _scalar(match.group(2))
        elif i < len(lines) and lines[i][0] > indent:
            mapping[key], i = _block(lines, i, lines[i][0])
        else:
            mapping[key] = None
    if i < len(lines) and lines[i][0] > indent:
        raise ValueError(f"bad indentation: {lines[i][1]}")
    return mapping, i


def test_the_reader_refuses_what_it_does_not_understand() -> None:
    assert parse_yaml('a:\n  b: \'1\'\n  c:\n    - x\n    - "y # z"\n  d: ["-js"]  # note\n') == {
        "a": {"b": "1", "c": ["x", "y # z"], "d": ["-js"]}
    }
    assert parse_yaml('a:\n  - b: 1\n    c:\n      - x\n  - d: 2\n  - "e:f"\n  - g:h\n') == {
        "a": [{"b": "1", "c": ["x"]}, {"d": "2"}, "e:f", "g:h"]
    }
    bad_yaml = (
        "a: {b: 1}",
        "a: &x 1",
        "a:\n  b: 1\n c: 2",
        "a: 1\na: 2",
        "a: |\n  text",
        "a:\n  - b: 1\n   c: 2",
    )
    for bad in bad_yaml:
        with pytest.raises(ValueError):
            parse_yaml(bad)


# ---- the compose file --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed: dict[str, Any] = parse_yaml((REPO / "docker-compose.yml").read_text())
    return parsed


MONITORING = {"prometheus", "grafana"}
NATS_NODES = ("nats-1", "nats-2", "nats-3")
REPLICAS = ("ledger-1", "ledger-2")
CLUSTER = {*NATS_NODES, *REPLICAS}


def test_compose_runs_nats_postgres_and_the_ledger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"nats", "postgres", "ledger", "agent", *MONITORING, *CLUSTER}
    assert set(compose["volumes"]) == {
        "nats-data",
        "postgres-data",
        "ledger-data",
        "agent-data",
        "prometheus-data",
        "grafana-data",
        *(f"{name}-data" for name in CLUSTER),
    }

    nats = services["nats"]
    assert nats["image"].startswith("nats:2.10-alpine")  # the scratch-based nats:2.10 has no wget
    command = nats["command"]
    assert "-js" in command and command[command.index("-sd") + 1] == "/data"
    assert command[command.index("-m") + 1] == "8222"
    assert "nats-data:/data" in nats["volumes"]
    assert nats["healthcheck"]["test"][:2] == ["CMD", "wget"]
    assert "http://127.0.0.1:8222/healthz" in nats["healthcheck"]["test"]

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert {"POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(postgres["environment"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    ledger = services["ledger"]
    assert ledger["build"] == "."
    assert ledger["depends_on"] == {
        "nats": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert "ledger-data:/var/lib/ledger" in ledger["volumes"]


@pytest.mark.parametrize("service", ["ledger", "agent"])
def test_the_ledger_and_the_agent_are_healthy_when_their_readyz_says_so(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    assert spec["healthcheck"]["test"] == ["CMD", "ledger-readyz"]  # deploy/readyz.sh, in the image
    assert "disable" not in spec["healthcheck"]
    assert _metrics_port(spec) == 9464
    assert spec["environment"]["LEDGER_METRICS_ADDR"].startswith(
        "0.0.0.0:"
    )  # Prometheus is another container


def test_every_ledger_environment_variable_is_one_ledger_reads(compose: dict[str, Any]) -> None:
    environment = compose["services"]["ledger"]["environment"]
    assert isinstance(environment, dict)
    unknown = sorted(set(environment) - ENV_NAMES)
    assert unknown == [], f"ledger does not read {unknown}; see ledger.config.SETTINGS"
    assert {"LEDGER_HOST_ID", "NETWORK_LIMIT", "OVERSUB_CPU", "LEDGER_METRICS_ADDR"} <= set(environment)


@pytest.mark.parametrize("service", ["ledger", "agent"])
def test_compose_states_what_a_container_cannot_discover(compose: dict[str, Any], service: str) -> None:
    """In a container discovery sees the container: its cgroup's CPUs and memory, the Docker volume's
    filesystem, a veth's fake link speed. Compose states them."""
    environment = compose["services"][service]["environment"]
    assert {"CPU_LIMIT", "MEMORY_LIMIT", "DISK_LIMIT", "NETWORK_LIMIT", "DISK_IO_LIMIT"} <= set(environment)
    settings = load_settings(environ={**environment, "LEDGER_DATA_DIR": "/var/lib/ledger"})
    assert all(
        value and value > 0
        for value in (settings.cpu_limit, settings.memory_limit, settings.disk_limit, settings.network_limit)
    )


def test_the_ledger_joins_the_compose_postgres_and_nats(compose: dict[str, Any]) -> None:
    services = compose["services"]
    environment = services["ledger"]["environment"]
    database = re.fullmatch(
        r"postgresql://(\w+):(\w+)@postgres:5432/(\w+)", environment["LEDGER_DATABASE_URL"]
    )
    assert database, environment["LEDGER_DATABASE_URL"]
    pg = services["postgres"]["environment"]
    assert database.groups() == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert environment["LEDGER_NATS_URL"] == "nats://nats:4222"


def test_the_ledger_environment_is_valid_configuration(compose: dict[str, Any]) -> None:
    environment = compose["services"]["ledger"]["environment"]
    try:
        settings = load_settings(environ={**environment, "LEDGER_DATA_DIR": "/var/lib/ledger"})
    except ConfigError as exc:  # pragma: no cover - the message says which value
        pytest.fail(str(exc))
    assert settings.database_url.startswith("postgresql://")
    assert settings.nats_url == "nats://nats:4222"
    read = {s.removeprefix("environment ") for s in settings.sources.values() if s.startswith("environment ")}
    assert read == {*environment, "LEDGER_DATA_DIR"}  # each variable set is one a setting took its value from


# ---- the Dockerfile ----------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    found = []
    for raw in logical.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _exec_form(instructions: list[tuple[str, str]], name: str) -> list[str]:
    values = [rest for word, rest in instructions if word == name]
    assert values, f"no {name}"
    parsed: list[str] = json.loads(values[-1])  # exec form: a JSON array, so signals reach ledger
    return parsed


def test_the_image_runs_ledger_serve_as_a_non_root_user_with_a_data_volume() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert _exec_form(instructions, "ENTRYPOINT") + _exec_form(instructions, "CMD") == [
        "ledger",
        "serve",
        "--log-format",
        "json",
    ]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(word == "RUN" and "pip install ." in rest for word, rest in instructions)
    assert any(word == "VOLUME" and "/var/lib/ledger" in rest for word, rest in instructions)
    assert any(word == "ENV" and "LEDGER_DATA_DIR=/var/lib/ledger" in rest for word, rest in instructions)
    assert any(word == "ENV" and "LEDGER_METRICS_ADDR=0.0.0.0:9464" in rest for word, rest in instructions)
    assert ("EXPOSE", "9464") in instructions


def test_the_image_health_check_asks_readyz_without_starting_python() -> None:
    instructions = _instructions()
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert len(health) == 1
    options, _, command = health[0].partition(" CMD ")
    assert "--timeout=" in options and json.loads(command) == ["ledger-readyz"]
    copied = [rest.split() for word, rest in instructions if word == "COPY"]
    assert ["--chmod=0755", "deploy/readyz.sh", "/usr/local/bin/ledger-readyz"] in copied
    script = (REPO / "deploy" / "readyz.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "/readyz" in script
    assert not re.search(r"^[^#]*\b(python|ledger|curl|wget)\b", script, re.MULTILINE)  # bash alone


def test_dockerignore_keeps_the_context_small_but_buildable() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "**/__pycache__", ".pytest_cache", ".mypy_cache"} <= patterns
    copied = {"pyproject.toml", "ledger", "migrations", "README.md"}
    assert not copied & patterns


def test_the_agent_publishes_to_the_compose_nats_with_valid_configuration(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    assert agent["command"][0] == "agent"
    assert agent["depends_on"] == {"nats": {"condition": "service_healthy"}}
    assert "agent-data:/var/lib/ledger" in agent["volumes"]
    environment = agent["environment"]
    assert sorted(set(environment) - ENV_NAMES) == []
    settings = load_settings(environ={**environment, "LEDGER_DATA_DIR": "/var/lib/ledger"})
    assert settings.nats_url == "nats://nats:4222"
    assert dict(settings.host_labels) == {"zone": "a", "rack": "r12"}
    assert settings.host_id != compose["services"]["ledger"]["environment"]["LEDGER_HOST_ID"]


# ---- the monitoring profile --------------------------------------------------------------------------------


def _metrics_port(service: dict[str, Any]) -> int:
    return int(service["environment"]["LEDGER_METRICS_ADDR"].rpartition(":")[2])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path, for the bind mounts of the repository's files."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            assert (REPO / source).exists(), f"{volume}: no such file in the repository"
            found[target] = source
    return found


def _deploy_yaml(service: dict[str, Any], container_path: str) -> Any:
    for target, source in _mounts(service).items():
        if container_path == target or container_path.startswith(target + "/"):
            return parse_yaml((REPO / source / container_path.removeprefix(target).lstrip("/")).read_text())
    raise AssertionError(f"nothing is mounted at {container_path}")


def test_monitoring_and_the_cluster_are_optional_profiles(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        profile = "monitoring" if name in MONITORING else "cluster" if name in CLUSTER else None
        assert service.get("profiles") == ([profile] if profile else None), name


# ---- the cluster profile -----------------------------------------------------------------------------------


def test_the_cluster_is_three_routed_jetstream_nodes(compose: dict[str, Any]) -> None:
    routes = {f"nats://{node}:6222" for node in NATS_NODES}
    for node in NATS_NODES:
        command = compose["services"][node]["command"]
        flag = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
        assert "-js" in command and flag["--server_name"] == node  # JetStream clustering needs a name
        assert flag["--cluster_name"] == "ledger" and flag["--cluster"] == "nats://0.0.0.0:6222"
        assert set(flag["--routes"].split(",")) == routes
        assert f"{node}-data:/data" in compose["services"][node]["volumes"]


def test_the_cluster_replicas_share_one_database_and_know_every_node(compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = [
        load_settings(environ={**services[name]["environment"], "LEDGER_DATA_DIR": "/var/lib/ledger"})
        for name in REPLICAS
    ]
    assert len({s.database_url for s in settings}) == 1
    assert settings[0].database_url.endswith("@postgres:5432/ledger_cluster")
    assert settings[0].database_url != services["ledger"]["environment"]["LEDGER_DATABASE_URL"]
    created = (REPO / "deploy" / "postgres" / "cluster.sql").read_text()
    assert "CREATE DATABASE ledger_cluster OWNER ledger;" in created
    assert (
        "./deploy/postgres/cluster.sql:/docker-entrypoint-initdb.d/cluster.sql:ro"
        in (services["postgres"]["volumes"])
    )
    for name, configured in zip(REPLICAS, settings, strict=True):
        assert configured.nats_url is not None
        assert {url.split("//")[1] for url in configured.nats_url.split(",")} == {
            f"{node}:4222" for node in NATS_NODES
        }
        assert configured.stream_replicas == 3 and not configured.serve_samples_usage
        assert set(services[name]["depends_on"]) == {*NATS_NODES, "postgres"}
        assert sorted(set(services[name]["environment"]) - ENV_NAMES) == []


def test_prometheus_scrapes_the_ledger_and_the_agent_where_they_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_path = prometheus["command"][0].removeprefix("--config.file=")
    config = _deploy_yaml(prometheus, config_path)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ledger", "agent"}
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        targets = [t for static in job["static_configs"] for t in static["targets"]]
        assert targets == [f"{name}:{_metrics_port(services[name])}"]


def test_grafana_reads_the_compose_prometheus_and_the_dashboard_in_the_repository(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    sources = _deploy_yaml(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert [(s["type"], s["url"], s["isDefault"]) for s in sources] == [
        ("prometheus", "http://prometheus:9090", "true")
    ]
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = _deploy_yaml(grafana, "/etc/grafana/provisioning/dashboards/ledger.yml")["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    dashboards = REPO / _mounts(grafana)[path]
    assert sorted(p.name for p in dashboards.iterdir()) == ["ledger.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/ledger.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (REPO / "deploy" / "grafana" / "dashboards" / "ledger.json").read_text()
    )
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_dashboard_shows_what_an_operator_watches(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in _panels(dashboard)}
    assert {"Admission rate", "Refusals by resource", "Event lag", "Dead letters"} <= titles
    bar = next(p for p in _panels(dashboard) if p["type"] == "barchart")
    exprs = [t["expr"] for t in bar["targets"]]
    for kind, expr in zip(("allocated", "pending", "available"), exprs, strict=True):
        assert expr.startswith(f"max by (resource) (ledger_{kind}{{") and "ledger_effective_limit" in expr
    assert bar["options"]["stacking"] == "normal" and bar["fieldConfig"]["defaults"]["max"] == 1
    host_rows = [p for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat") == "host"]
    assert len(host_rows) == 1
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(ledger_capacity, host)" in variables["host"]["definition"]


def test_every_panel_queries_the_dashboard_data_source(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"]), panel["title"]
