"""`Cli`: the `ledger` command as a real subprocess, in a data dir of its own, with no ledger setting leaking
in from the environment that runs the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from ledger.config import ENV_NAMES, Settings, load_settings
from ledger.local import open_writer, refresh_host
from ledger.store import migrate

_STRIPPED_PREFIXES = ("LEDGER_", "OVERSUB_")


class Cli:
    """`ledger` in `data_dir` as host `host_id`; `run` never raises on an exit code."""

    def __init__(self, data_dir: Path, host_id: str) -> None:
        self.data_dir = data_dir
        self.host_id = host_id
        self.env = {
            name: value
            for name, value in os.environ.items()
            if name not in ENV_NAMES and not name.startswith(_STRIPPED_PREFIXES)
        }
        self.env.update(
            LEDGER_DATA_DIR=str(data_dir),
            LEDGER_HOST_ID=host_id,
            CPU_LIMIT="4",
            NETWORK_LIMIT="10Gbps",
            LEDGER_METRICS_ADDR="127.0.0.1:0",  # any free port: parallel tests never fight over 9464
            TMPDIR=str(data_dir.parent / "tmp"),  # where an internal error's traceback file goes
        )
        (data_dir.parent / "tmp").mkdir(exist_ok=True)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ledger.db"

    def settings(self, **env: str) -> Settings:
        return load_settings(environ={**self.env, **env})

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self, *args: str, env: Mapping[str, str] | None = None, **options: object
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", *args],
            env={**self.env, **(env or {})},
            text=True,
            **options,  # type: ignore[call-overload]
        )

    def prepare(self, **env: str) -> None:
        prepare({**self.env, **env})


def prepare(env: Mapping[str, str]) -> None:
    """What `ledger db upgrade` and `ledger host refresh` do, in this process (faster than two runs)."""
    settings = load_settings(environ=env)
    migrate.upgrade(settings.database_url)
    ledger = open_writer(settings)
    try:
        refresh_host(ledger, settings)
    finally:
        ledger.close()


def ok(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    return process.stdout


def one_line_error(process: subprocess.CompletedProcess[str], code: int) -> str:
    """The process failed with `code`, saying why in one line and nothing else; returns that line."""
    assert process.returncode == code, (process.returncode, process.stdout, process.stderr)
    assert "Traceback" not in process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("ledger: ")
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """`ledger` in an empty data dir (no database yet)."""
    return Cli(tmp_path / "data", f"cli-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def ready_cli(cli: Cli) -> Cli:
    """`ledger` with a migrated database where its host is registered."""
    cli.prepare()
    return cli
