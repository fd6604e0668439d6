"""Secrets (issue 17, item 3, the command line's part): a password or token in LEDGER_DATABASE_URL or
LEDGER_NATS_URL never reaches the output or an error message of any command."""

from __future__ import annotations

import subprocess

import pytest

from ledger.core.errors import ConfigError
from ledger.store.engine import describe, make_engine, normalize_url
from tests.cli.conftest import Cli

DB_PASSWORD = "db-pa55word"
NATS_PASSWORD = "nats-pa55word"
NATS_TOKEN = "nats-t0ken"
# Unreachable on purpose: every command that uses them fails, and its message names them.
DATABASE_URL = f"postgresql://ledger:{DB_PASSWORD}@127.0.0.1:1/ledger"
NATS_URL = f"nats://ledger:{NATS_PASSWORD}@127.0.0.1:1,nats://{NATS_TOKEN}@127.0.0.1:2"
SECRETS = (DB_PASSWORD, NATS_PASSWORD, NATS_TOKEN)


def _leaks(process: subprocess.CompletedProcess[str]) -> list[str]:
    return [secret for secret in SECRETS if secret in process.stdout + process.stderr]


@pytest.mark.parametrize(
    "args",
    [
        ("config",),
        ("config", "--json"),
        ("config", "--get", "database_url"),
        ("config", "--get", "nats_url"),
        ("status",),  # through the NATS URL
        ("validate", "--vcpus", "1"),
        ("release", "x"),
        ("defaults", "--vcpus", "1"),
        ("image-pull-check",),
        ("fit", "--vcpus", "1"),
        ("events", "publish", "-"),
        ("events", "tail"),
        ("events", "consume"),
    ],
    ids=" ".join,
)
def test_no_command_prints_a_url_password_with_both_urls_set(cli: Cli, args: tuple[str, ...]) -> None:
    process = cli.run(*args, env={"LEDGER_DATABASE_URL": DATABASE_URL, "LEDGER_NATS_URL": NATS_URL})
    assert "Traceback" not in process.stderr
    assert _leaks(process) == []
    assert "***" in process.stdout + process.stderr  # the URL was shown, masked


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--all"),
        ("host", "list"),
        ("host", "refresh"),
        ("events", "dead-letters", "list"),
        ("db", "current"),
        ("db", "upgrade"),
        ("db", "check"),
        ("db", "prune"),
        ("config", "--json"),
    ],
    ids=" ".join,
)
def test_no_database_command_prints_its_password(cli: Cli, args: tuple[str, ...]) -> None:
    process = cli.run(*args, env={"LEDGER_DATABASE_URL": DATABASE_URL, "OVERSUB_CPU": "8"})
    assert "Traceback" not in process.stderr
    assert _leaks(process) == []
    assert "ledger:***@127.0.0.1:1" in process.stdout + process.stderr


def test_a_password_in_a_flag_is_masked_too(cli: Cli) -> None:
    process = cli.run("status", "--database-url", DATABASE_URL)
    assert process.returncode == 6 and _leaks(process) == []


@pytest.mark.parametrize(
    "url", [f"mysql://ledger:{DB_PASSWORD}@db/x", f"postgresql://ledger:{DB_PASSWORD}@db:port/x"]
)
def test_engine_errors_mask_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make_engine(url)
    assert DB_PASSWORD not in refused.value.message and "ledger:***@db" in refused.value.message


def test_the_database_is_described_without_its_password() -> None:
    assert describe(DATABASE_URL) == "postgresql+psycopg://ledger:***@127.0.0.1:1/ledger"
    assert describe(normalize_url("sqlite:////var/lib/ledger/ledger.db")) == "/var/lib/ledger/ledger.db"
