"""`ledger config` run as a real process: values, sources, and a clean one-line error for a bad setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.cli.common import COMMON_FLAGS
from ledger.config import ENV_NAMES, SETTINGS

# Everything the ledger reads from the environment, plus prefixes someone might add later.
_STRIPPED_PREFIXES = ("LEDGER_", "OVERSUB_")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The current environment without any ledger setting, with HOME and XDG data under `tmp_path`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ENV_NAMES and not name.startswith(_STRIPPED_PREFIXES)
    }
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


def run_ledger(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_json(tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    result = run_ledger(tmp_path, "config", "--json", *args, **env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_config_json_lists_every_setting_with_value_and_source(tmp_path: Path) -> None:
    data = config_json(tmp_path)
    assert list(data) == [s.key for s in SETTINGS]
    assert data["oversub_cpu"] == {"value": "4.0", "source": "default"}
    assert data["oversub_network"] == {"value": "2.0", "source": "default"}
    assert data["max_image_storage"] == {"value": "0.2", "source": "default"}
    assert data["default_bandwidth"] == {"value": "True", "source": "default"}
    assert data["default_bandwidth_uses_ratio"] == {"value": "False", "source": "default"}
    assert data["cpu_limit"] == {"value": "(unset)", "source": "default"}
    assert data["data_dir"]["value"] == str(tmp_path / "xdg" / "ledger")
    assert data["host_id"]["source"] == "default (hostname)"


def test_config_json_reports_environment_file_and_flag_sources(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text('oversub_memory = 1.5\nhost_id = "file-host"\ndisk_limit = "2TB"\n', encoding="utf-8")
    data = config_json(
        tmp_path,
        "--config",
        str(config),
        "--host-id",
        "flag-host",
        OVERSUB_CPU="8",
        LEDGER_HOST_ID="env-host",
        NETWORK_LIMIT="10Gbps",
    )
    assert data["oversub_cpu"] == {"value": "8.0", "source": "environment OVERSUB_CPU"}
    assert data["network_limit"] == {"value": "1250000000", "source": "environment NETWORK_LIMIT"}
    assert data["oversub_memory"] == {"value": "1.5", "source": f"config file {config}"}
    assert data["disk_limit"] == {"value": "2000000000000", "source": f"config file {config}"}
    assert data["host_id"] == {"value": "flag-host", "source": "flag --host-id"}


def test_config_file_from_ledger_config_environment(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text("[ledger]\noversub_disk_io = 3\n", encoding="utf-8")
    data = config_json(tmp_path, LEDGER_CONFIG=str(config))
    assert data["oversub_disk_io"] == {"value": "3.0", "source": f"config file {config}"}


def test_config_json_masks_secrets(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--json", LEDGER_NATS_PASSWORD="hunter2")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert json.loads(result.stdout)["nats_password"]["value"] == "***"


URL_SECRETS = {
    "LEDGER_DATABASE_URL": "postgresql://app:hunter2@db/ledger",
    "LEDGER_NATS_URL": "nats://user:pw0rd@h1:4222,nats://t0ken@h2:4222",
}


def test_config_json_masks_passwords_and_tokens_in_urls(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--json", **URL_SECRETS)
    assert result.returncode == 0, result.stderr
    for secret in ("hunter2", "pw0rd", "t0ken"):
        assert secret not in result.stdout
    data = json.loads(result.stdout)
    assert data["database_url"]["value"] == "postgresql://app:***@db/ledger"
    assert data["nats_url"]["value"] == "nats://user:***@h1:4222,nats://***@h2:4222"


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("database_url", "postgresql://app:***@db/ledger"),
        ("nats_url", "nats://user:***@h1:4222,nats://***@h2:4222"),
    ],
)
def test_config_get_masks_passwords_in_urls(tmp_path: Path, key: str, shown: str) -> None:
    result = run_ledger(tmp_path, "config", "--get", key, **URL_SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == shown + "\n"


def test_config_table_masks_passwords_in_a_url_given_as_a_flag(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--database-url", "postgresql://app:hunter2@db/ledger")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "postgresql://app:***@db/ledger" in result.stdout


def test_config_table_shows_keys_sources_and_environment_names(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", OVERSUB_CPU="6")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("oversub_cpu "))
    assert "6.0" in line
    assert "environment OVERSUB_CPU" in line
    assert "[LEDGER_OVERSUB_CPU/OVERSUB_CPU]" in line


def test_config_names_the_ledger_variable_when_it_wins(tmp_path: Path) -> None:
    data = config_json(tmp_path, OVERSUB_CPU="8", LEDGER_OVERSUB_CPU="6")
    assert data["oversub_cpu"] == {"value": "6.0", "source": "environment LEDGER_OVERSUB_CPU"}


def test_config_reads_the_generic_database_url_name(tmp_path: Path) -> None:
    data = config_json(tmp_path, DATABASE_URL="postgresql://app@db/ledger")
    assert data["database_url"] == {
        "value": "postgresql://app@db/ledger",
        "source": "environment DATABASE_URL",
    }


def test_bad_environment_value_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--json", OVERSUB_CPU="-1")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "OVERSUB_CPU" in lines[0]
    assert "oversub_cpu" in lines[0]
    assert "'-1'" in lines[0]
    assert "Accepted:" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_ledger_named_value_exits_2_naming_that_variable(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", LEDGER_MAX_IMAGE_STORAGE="2", MAX_IMAGE_STORAGE="0.5")
    assert result.returncode == 2
    assert "environment LEDGER_MAX_IMAGE_STORAGE" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_size_exits_2_quoting_the_input(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", DISK_LIMIT="10 potatoes")
    assert result.returncode == 2
    assert "'10 potatoes'" in result.stderr
    assert "DISK_LIMIT" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_in_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text("oversub_gpu = 2\n", encoding="utf-8")
    result = run_ledger(tmp_path, "config", "--config", str(config))
    assert result.returncode == 2
    assert "oversub_gpu" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("--help",), ("config", "--help")])
def test_help_exits_0(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_ledger(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "usage: ledger" in result.stdout


def test_config_help_names_the_precedence_and_common_flags(tmp_path: Path) -> None:
    result = run_ledger(tmp_path, "config", "--help")
    for text in ("--json", "--config", "--data-dir", "--database-url", "--nats-url", "--host-id"):
        assert text in result.stdout
    for name in (
        "LEDGER_CONFIG",
        "LEDGER_DATA_DIR",
        "LEDGER_DATABASE_URL",
        "LEDGER_NATS_URL",
        "LEDGER_HOST_ID",
    ):
        assert name in " ".join(result.stdout.split()), name


def test_common_flags_are_the_registrys_flag_settings() -> None:
    assert COMMON_FLAGS == ("data_dir", "database_url", "nats_url", "host_id")
    assert [s.key for s in SETTINGS if s.cli_flag] == list(COMMON_FLAGS)
