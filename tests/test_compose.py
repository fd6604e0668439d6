"""docker-compose.yml and the Dockerfile configure the ledger with settings it actually reads.

PyYAML is not a dependency, so a small parser reads the block-style subset of YAML the compose file is
written in (maps, `- item` lists, JSON-style flow lists, quoted or plain scalars, comments), and refuses
anything else rather than misreading it.
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


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            items.append(_scalar(lines[i][1][2:]))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        match = re.fullmatch(r"([\w.-]+|\"[^\"]+\"):(?:\s+(.*))?", lines[i][1])
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
    for bad in ("a: {b: 1}", "a: &x 1", "a:\n  b: 1\n c: 2", "a: 1\na: 2", "a: |\n  text"):
        with pytest.raises(ValueError):
            parse_yaml(bad)


# ---- the compose file --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed: dict[str, Any] = parse_yaml((REPO / "docker-compose.yml").read_text())
    return parsed


def test_compose_runs_nats_postgres_and_the_ledger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"nats", "postgres", "ledger", "agent"}
    assert set(compose["volumes"]) == {"nats-data", "postgres-data", "ledger-data", "agent-data"}

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


def test_every_ledger_environment_variable_is_one_ledger_reads(compose: dict[str, Any]) -> None:
    environment = compose["services"]["ledger"]["environment"]
    assert isinstance(environment, dict)
    unknown = sorted(set(environment) - ENV_NAMES)
    assert unknown == [], f"ledger does not read {unknown}; see ledger.config.SETTINGS"
    assert {"LEDGER_HOST_ID", "NETWORK_LIMIT", "OVERSUB_CPU"} <= set(environment)


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
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert len(health) == 1 and "ledger status" in health[0] and "serve.json" in health[0]


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
