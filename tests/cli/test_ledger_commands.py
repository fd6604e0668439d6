"""The `ledger` command line, run as real subprocesses against a SQLite file (and once against PostgreSQL).

`ledger_cli` runs in a data dir whose database is migrated and has this host registered (what `ledger db
upgrade` and `ledger host refresh` do); `fresh_cli` in an empty one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.cli.completion import walk
from ledger.cli.main import build_parser
from ledger.store import migrate
from tests.cli.conftest import prepare

Run = Callable[..., subprocess.CompletedProcess[str]]

RESOURCE_KEYS = {
    "type",
    "capacity",
    "effective_limit",
    "allocated",
    "pending",
    "available",
    "oversub_ratio",
    "source",
}


def _clean_env(tmp_path: Path, host_id: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "OVERSUB_")) and not k.endswith("_LIMIT")
    }
    env.update(LEDGER_DATA_DIR=str(tmp_path), LEDGER_HOST_ID=host_id, NETWORK_LIMIT="10Gbps", CPU_LIMIT="4")
    return env


@pytest.fixture
def cli_host() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def _runner(env: dict[str, str]) -> Run:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def fresh_cli(tmp_path: Path, cli_host: str) -> Run:
    """`ledger ARGS…` in an empty data directory; returns the finished process (never raises on exit code)."""
    return _runner(_clean_env(tmp_path, cli_host))


@pytest.fixture
def ledger_cli(tmp_path: Path, cli_host: str) -> Run:
    """`ledger ARGS…` in a data directory with a migrated database where this host is registered."""
    env = _clean_env(tmp_path, cli_host)
    prepare(env)
    return _runner(env)


def ok(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    return process.stdout


def status_json(ledger_cli: Run, *extra: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(ledger_cli("status", "--json", *extra)))
    return data


def test_status_prints_a_table_with_usage_bars(ledger_cli: Run, cli_host: str) -> None:
    out = ok(ledger_cli("status"))
    assert f"host {cli_host}" in out
    for resource in ("cpu", "memory", "disk", "network", "disk_io"):
        assert any(
            line.startswith(resource + " ") and "[" in line and "%" in line for line in out.splitlines()
        )
    assert "4.0x  configured" in out  # CPU_LIMIT=4 with the default 4.0 ratio
    assert "20.0 Gbps" in out  # NETWORK_LIMIT=10Gbps with the default 2.0 ratio
    assert "no active instances" in out


def test_status_json_has_the_seeds_full_resource_status_keys_with_pending(
    ledger_cli: Run, cli_host: str
) -> None:
    data = status_json(ledger_cli)
    assert {"cpu", "memory", "disk", "network", "disk_io", "disk_breakdown", "allocations"} <= set(data)
    assert data["host"] == cli_host
    for resource in ("cpu", "memory", "disk", "network", "disk_io"):
        assert set(data[resource]) == RESOURCE_KEYS
        assert data[resource]["type"] == resource
    assert data["cpu"]["capacity"] == 4
    assert data["cpu"]["effective_limit"] == 16
    assert data["network"]["capacity"] == 1_250_000_000
    assert set(data["disk_breakdown"]) == {
        "images_bytes",
        "oci_cache_bytes",
        "volumes_bytes",
        "overlays_bytes",
    }
    assert data["allocations"] == []


def test_validate_prints_a_reservation_id_and_status_shows_it_pending(ledger_cli: Run) -> None:
    reservation_id = ok(ledger_cli("validate", "--vcpus", "2", "--memory", "1GiB")).strip()
    assert len(reservation_id) == 32
    data = status_json(ledger_cli)
    assert (data["cpu"]["pending"], data["cpu"]["available"]) == (2, 14)
    assert data["memory"]["pending"] == 2**30
    assert "++" in ok(ledger_cli("status"))


def test_validate_refusal_exits_3_with_the_seed_message_and_no_traceback(ledger_cli: Run) -> None:
    refused = ledger_cli("validate", "--vcpus", "100")
    assert refused.returncode == 3
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        "ledger: insufficient CPU: requested 100 vCPUs, but only 16 available "
        "(currently allocated: 0, effective limit: 16 with 4.0x oversubscription)"
    )


def test_validate_with_the_same_key_replays_the_same_reservation(ledger_cli: Run) -> None:
    first = ok(ledger_cli("validate", "--vcpus", "1", "--key", "retry-me")).strip()
    again = json.loads(ok(ledger_cli("validate", "--vcpus", "1", "--key", "retry-me", "--json")))
    assert again["reservation_id"] == first
    assert again["replayed"] is True
    assert status_json(ledger_cli)["cpu"]["pending"] == 1
    conflict = ledger_cli("validate", "--vcpus", "3", "--key", "retry-me")
    assert conflict.returncode != 0
    assert "already used for a different request" in conflict.stderr
    assert "Traceback" not in conflict.stderr


def test_release_gives_the_hold_back(ledger_cli: Run) -> None:
    reservation_id = ok(ledger_cli("validate", "--vcpus", "2")).strip()
    assert ok(ledger_cli("release", reservation_id)).strip() == f"{reservation_id} released"
    assert status_json(ledger_cli)["cpu"]["pending"] == 0
    again = json.loads(ok(ledger_cli("release", reservation_id, "--json")))
    assert again["status"] == "released"


def test_releasing_an_unknown_reservation_exits_4(ledger_cli: Run) -> None:
    missing = ledger_cli("release", "nope")
    assert missing.returncode == 4
    assert missing.stderr.strip() == "ledger: no reservation 'nope'"


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "--vcpus", "1", "--memory", "10 potatoes"),
        ("validate", "--vcpus", "-1"),
        ("validate", "--vcpus", "1", "--network-down", "10GBps"),
        ("validate", "--vcpus", "1", "--ttl", "0"),
        ("validate", "--vcpus", "1", "--key", ""),
        ("db", "downgrade"),
        ("nonsense",),
    ],
)
def test_bad_input_exits_2_and_quotes_the_problem(ledger_cli: Run, args: tuple[str, ...]) -> None:
    bad = ledger_cli(*args)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip()


def test_bad_size_message_quotes_the_input(ledger_cli: Run) -> None:
    bad = ledger_cli("validate", "--vcpus", "1", "--memory", "10 potatoes")
    assert "cannot parse '10 potatoes' as a size" in bad.stderr


def test_db_upgrade_creates_the_database_then_current_and_check_read_it(
    fresh_cli: Run, tmp_path: Path
) -> None:
    head = migrate.head_revision()
    missing = fresh_cli("db", "current")
    assert missing.returncode == 2 and str(tmp_path / "ledger.db") in missing.stderr
    assert not (tmp_path / "ledger.db").exists()
    assert ok(fresh_cli("db", "upgrade")).strip() == f"database at revision {head}"
    assert ok(fresh_cli("db", "current")).strip() == f"{head} (up to date)"
    assert ok(fresh_cli("db", "check")).strip() == "models and migrations agree"
    assert ok(fresh_cli("db", "downgrade", "base")).strip() == "database at revision base"
    assert ok(fresh_cli("db", "current")).strip() == f"empty (behind: head is {head})"


def test_host_refresh_registers_this_host_and_list_shows_it(fresh_cli: Run, cli_host: str) -> None:
    ok(fresh_cli("db", "upgrade"))
    assert ok(fresh_cli("host", "list")).strip() == "no hosts registered"
    assert ok(fresh_cli("host", "refresh")).strip() == f"host {cli_host} registered"
    assert ok(fresh_cli("host", "list")).strip() == cli_host
    assert json.loads(ok(fresh_cli("host", "list", "--json"))) == [cli_host]
    refreshed = json.loads(ok(fresh_cli("host", "refresh", "--json")))
    assert refreshed["host"] == cli_host


def test_status_of_an_unknown_other_host_exits_4(ledger_cli: Run) -> None:
    missing = ledger_cli("status", "--host", "not-a-host")
    assert missing.returncode == 4
    assert "unknown host 'not-a-host'" in missing.stderr


def test_validate_and_status_against_postgresql(ledger_cli: Run, pg_url: str, cli_host: str) -> None:
    ok(ledger_cli("host", "refresh", "--database-url", pg_url))
    reservation_id = ok(
        ledger_cli("validate", "--database-url", pg_url, "--vcpus", "3", "--memory", "2GiB")
    ).strip()
    data = status_json(ledger_cli, "--database-url", pg_url)
    assert data["host"] == cli_host
    assert (data["cpu"]["pending"], data["memory"]["pending"]) == (3, 2 * 2**30)
    ok(ledger_cli("release", "--database-url", pg_url, reservation_id))
    assert status_json(ledger_cli, "--database-url", pg_url)["cpu"]["pending"] == 0


@pytest.mark.parametrize("command", [c.path.split()[1:] for c in walk(build_parser())])
def test_help_of_every_command_exits_0(fresh_cli: Run, command: list[str]) -> None:
    out = ok(fresh_cli(*command, "--help"))
    assert out.startswith("usage: ledger")
