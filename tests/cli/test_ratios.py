"""Configuration that tells the truth (issue 17, item 9): a ratio set in the configuration that differs from
the one stored for this host at registration shows both, and says `ledger host refresh` applies it.

(LEDGER_-prefixed seed names, DATABASE_URL and NATS_URL are covered by tests/unit/test_config.py.)"""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli, ok

NOTE = (
    "oversub_cpu is 8.0 in this configuration (environment OVERSUB_CPU), but host {host} was registered "
    "with 4.0, which is in force: run `ledger host refresh` with this configuration to apply it"
)


def test_status_shows_both_ratios_and_how_to_apply_the_new_one(ready_cli: Cli) -> None:
    out = ok(ready_cli.run("status", env={"OVERSUB_CPU": "8"}))
    assert "4.0x  configured" in out  # what is in force: the stored ratio
    assert f"note: {NOTE.format(host=ready_cli.host_id)}" in out


def test_status_json_stays_the_reply_and_says_it_on_stderr(ready_cli: Cli) -> None:
    done = ready_cli.run("status", "--json", env={"OVERSUB_CPU": "8"})
    assert json.loads(ok(done))["cpu"]["oversub_ratio"] == 4.0
    assert done.stderr.startswith(f"ledger: note: {NOTE.format(host=ready_cli.host_id)}")


def test_config_shows_the_stored_ratio_beside_the_configured_one(ready_cli: Cli) -> None:
    table = ok(ready_cli.run("config", env={"OVERSUB_CPU": "8"}))
    line = next(line for line in table.splitlines() if line.startswith("oversub_cpu "))
    assert "8.0" in line and "environment OVERSUB_CPU" in line
    assert f"(host {ready_cli.host_id} has 4.0: `ledger host refresh` applies 8.0)" in line

    data = json.loads(ok(ready_cli.run("config", "--json", env={"LEDGER_OVERSUB_CPU": "8"})))
    assert data["oversub_cpu"]["value"] == "8.0" and data["oversub_cpu"]["stored"] == "4.0"
    assert data["oversub_cpu"]["apply"] == "ledger host refresh"
    assert set(data["oversub_memory"]) == {"value", "source"}


def test_host_refresh_applies_it_and_the_notes_go(ready_cli: Cli) -> None:
    eight = {"OVERSUB_CPU": "8"}
    ok(ready_cli.run("host", "refresh", env=eight))
    out = ok(ready_cli.run("status", env=eight))
    assert "8.0x  configured" in out and "note:" not in out
    assert "`ledger host refresh` applies" not in ok(ready_cli.run("config", env=eight))


@pytest.mark.parametrize("env", [{}, {"OVERSUB_CPU": "4"}, {"OVERSUB_MEMORY": "1.0"}])
def test_nothing_is_said_when_the_ratios_agree_or_are_not_set(ready_cli: Cli, env: dict[str, str]) -> None:
    assert "note:" not in ok(ready_cli.run("status", env=env))
    assert "`ledger host refresh` applies" not in ok(ready_cli.run("config", env=env))


def test_another_hosts_status_is_not_compared(ready_cli: Cli) -> None:
    """The configuration describes this host: ratios of a host named with --host are not its business."""
    ok(ready_cli.run("host", "refresh", "--host-id", "other", env={"OVERSUB_CPU": "2"}))
    assert "note:" not in ok(ready_cli.run("status", "--host", "other", env={"OVERSUB_CPU": "8"}))


def test_config_without_a_database_prints_the_settings_all_the_same(cli: Cli) -> None:
    table = ok(cli.run("config", env={"OVERSUB_CPU": "8"}))
    assert "oversub_cpu" in table and "`ledger host refresh` applies" not in table
