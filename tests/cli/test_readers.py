"""Readers never write (issue 17, item 6): commands that only read open the database read-only (enforced by
the database), never create or migrate it, and never register a host; writers keep working."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledger.core.charges import AllocationRequest
from ledger.core.errors import ConfigError
from ledger.core.resources import ResourceType
from ledger.store import migrate
from ledger.store.database import ReadOnlyError
from ledger.store.ledger import Ledger
from tests.cli.conftest import Cli, ok, one_line_error
from tests.conftest import capacities

# Every command that only reads, as run against a database (the database is named by the Cli's data dir).
READERS = (
    ("status",),
    ("status", "--json"),
    ("status", "--all"),
    ("host", "list"),
    ("fit", "--vcpus", "1"),
    ("defaults", "--vcpus", "2"),
    ("image-pull-check",),
    ("top", "--once"),
    ("advise",),
    ("reservations",),
    ("reservations", "--key", "vm-1"),
    ("events", "dead-letters", "list"),
    ("events", "dead-letters", "show", "1"),
    ("db", "current"),
    ("db", "check"),
)
WRITERS = (
    ("validate", "--vcpus", "1"),
    ("release", "0" * 32),
    ("place", "--vcpus", "1"),
    ("host", "refresh"),
    ("db", "prune"),
    ("events", "dead-letters", "replay", "1"),
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args", READERS + WRITERS, ids=" ".join)
def test_a_missing_database_is_an_error_naming_the_path_and_is_not_created(
    cli: Cli, args: tuple[str, ...]
) -> None:
    line = one_line_error(cli.run(*args), 2)
    assert f"no ledger database at {cli.db_path} (no such file)" in line
    assert "ledger db upgrade" in line
    assert "[database_url from default]" in line or args[:2] in {("db", "current"), ("db", "check")}
    assert not cli.data_dir.exists(), "a reader created the data dir"


def test_a_mistyped_path_is_named_as_typed(cli: Cli, tmp_path: Path) -> None:
    cli.prepare()
    typo = tmp_path / "data" / "ledgr.db"
    line = one_line_error(cli.run("status", "--database-url", f"sqlite:///{typo}"), 2)
    assert f"no ledger database at {typo}" in line and "[database_url from flag --database-url]" in line
    assert not typo.exists()


def test_config_works_without_a_database_and_creates_none(cli: Cli) -> None:
    ok(cli.run("config", env={"OVERSUB_CPU": "8"}))  # a ratio is set: config looks for the host, finds none
    assert not cli.data_dir.exists()


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_a_database_without_the_schema_says_to_upgrade_and_is_left_alone(
    cli: Cli, args: tuple[str, ...]
) -> None:
    cli.data_dir.mkdir(parents=True)
    sqlite3.connect(cli.db_path).execute("CREATE TABLE unrelated (x)").connection.close()
    before = _digest(cli.db_path)
    process = cli.run(*args)
    if args == ("db", "current"):  # it answers the question instead
        assert ok(process).startswith("empty (behind")
    else:
        line = one_line_error(process, 2)
        assert f"the database at {cli.db_path} has no ledger schema yet: run `ledger db upgrade`" in line
    assert _digest(cli.db_path) == before
    tables = sqlite3.connect(cli.db_path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("unrelated",)]


def test_a_database_behind_this_version_says_to_upgrade_and_stays_behind(cli: Cli) -> None:
    migrate.upgrade(cli.settings().database_url, "0004")
    line = one_line_error(cli.run("status"), 2)
    assert "is at revision 0004, behind this ledger's" in line and "`ledger db upgrade`" in line
    assert ok(cli.run("db", "current")).startswith("0004 (behind")


def test_a_file_that_is_not_a_database_is_named(cli: Cli) -> None:
    cli.data_dir.mkdir(parents=True)
    cli.db_path.write_text("not a database\n" * 100)
    line = one_line_error(cli.run("status"), 2)
    assert f"{cli.db_path} is not a ledger database" in line


def test_status_without_host_does_not_register_this_host_and_lists_the_known_ones(cli: Cli) -> None:
    url = cli.settings().database_url
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False)
    ledger.register_host("node-a", capacities(), {})
    ledger.register_host("node-b", capacities(), {})
    ledger.close()

    for args in (
        ("status",),
        ("defaults", "--vcpus", "1"),
        ("image-pull-check",),
        ("validate", "--vcpus", "1"),
    ):
        line = one_line_error(cli.run(*args), 4)
        assert (
            f"this host, {cli.host_id!r} (host_id from environment LEDGER_HOST_ID), is not registered" in line
        )
        assert "it has node-a, node-b: name one with --host" in line
        assert "`ledger host refresh`" in line

    assert ok(cli.run("host", "list")).split() == ["node-a", "node-b"]
    assert ok(cli.run("status", "--host", "node-a")).startswith("host node-a")


def test_an_empty_ledger_says_it_has_no_hosts(cli: Cli) -> None:
    migrate.upgrade(cli.settings().database_url)
    line = one_line_error(cli.run("status"), 4)
    assert "it has no hosts: register this host with `ledger host refresh`" in line


def test_writers_keep_working_on_a_migrated_database(cli: Cli) -> None:
    ok(cli.run("db", "upgrade"))
    assert ok(cli.run("host", "refresh")).strip() == f"host {cli.host_id} registered"
    held = ok(cli.run("validate", "--vcpus", "2")).strip()
    assert ok(cli.run("release", held)).strip() == f"{held} released"
    assert "total" in ok(cli.run("db", "prune"))


def _hold(url: str, host: str, ttl: float) -> str:
    ledger = Ledger.open(url, migrate=False)
    try:
        return ledger.reserve(host, AllocationRequest(vcpus=2), ttl=ttl).reservation_id
    finally:
        ledger.close()


def _row(url: str, reservation_id: str) -> tuple[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            status = conn.execute(
                text("SELECT status FROM reservations WHERE reservation_id = :r"), {"r": reservation_id}
            ).scalar_one()
            history = conn.execute(text("SELECT count(*) FROM allocation_log")).scalar_one()
        return status, history
    finally:
        engine.dispose()


def test_a_reader_leaves_an_expired_hold_out_of_pending_without_ending_it(ready_cli: Cli) -> None:
    url = ready_cli.settings().database_url
    expired = _hold(url, ready_cli.host_id, ttl=0.2)
    time.sleep(0.5)
    before = _row(url, expired)
    digest = _digest(ready_cli.db_path)

    status = ok(ready_cli.run("status", "--json"))
    assert '"pending": 0' in status and '"available": 16' in status
    assert ok(ready_cli.run("defaults", "--vcpus", "1"))

    assert before[0] == "held" and _row(url, expired) == before  # only a writer ends it
    assert _digest(ready_cli.db_path) == digest
    ok(ready_cli.run("validate", "--vcpus", "1"))  # a writer sweeps it
    assert _row(url, expired)[0] == "expired"


def test_the_database_refuses_a_write_from_a_read_only_ledger(db_url: str) -> None:
    """Enforced, not hoped: a read-only ledger that tries to write is stopped by SQLite or PostgreSQL."""
    host = f"ro-{uuid.uuid4().hex[:8]}"
    writer = Ledger.open(db_url, migrate=False)
    writer.register_host(host, capacities(), {})
    expired = writer.reserve(host, AllocationRequest(vcpus=1), ttl=0.1).reservation_id
    writer.close()
    time.sleep(0.3)

    reader = Ledger.open(db_url, read_only=True)
    try:
        status = reader.full_status(host)
        assert (status.resources[ResourceType.CPU].pending, status.resources[ResourceType.CPU].available) == (
            0,
            64,
        )
        assert reader.status(host, ResourceType.CPU).pending == 0
        with pytest.raises(ReadOnlyError, match=r"opened read-only: .*read-?only"):
            reader.reserve(host, AllocationRequest(vcpus=1))
        with pytest.raises(ReadOnlyError, match=r"opened read-only: .*read-?only"):
            reader.register_host(f"{host}-new", capacities(), {})
    finally:
        reader.close()
    assert reader_sees_no_new_host(db_url, host)
    assert _row(db_url, expired)[0] == "held"


def reader_sees_no_new_host(url: str, host: str) -> bool:
    ledger = Ledger.open(url, read_only=True)
    try:
        return f"{host}-new" not in ledger.host_ids()
    finally:
        ledger.close()


def test_a_read_only_ledger_never_creates_or_migrates(tmp_path: Path, pg_database_factory: object) -> None:
    with pytest.raises(ConfigError, match="no ledger database at"):
        Ledger.open(f"sqlite:///{tmp_path / 'nope.db'}", read_only=True)
    assert not (tmp_path / "nope.db").exists()
    empty: str = pg_database_factory()  # type: ignore[operator]
    with pytest.raises(ConfigError, match="has no ledger schema yet"):
        Ledger.open(empty, read_only=True)
    engine = create_engine(empty)
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
    engine.dispose()
    assert tables == 0


def test_postgresql_readers_say_what_is_missing(cli: Cli, pg_database_factory: object) -> None:
    empty: str = pg_database_factory()  # type: ignore[operator]
    line = one_line_error(cli.run("status", "--database-url", empty), 2)
    assert "has no ledger schema yet: run `ledger db upgrade`" in line
    migrate.upgrade(empty)
    line = one_line_error(cli.run("status", "--database-url", empty), 4)
    assert "it has no hosts" in line


def test_dead_letters_come_a_page_at_a_time_with_the_total(ready_cli: Cli) -> None:
    ledger = Ledger.open(f"sqlite:///{ready_cli.db_path}", migrate=False)
    try:
        ids = [ledger.letters.record(payload=b"{", reason=f"broken {n}") for n in range(5)]
    finally:
        ledger.close()

    first = ready_cli.run("events", "dead-letters", "--limit", "2", "--json")
    page = json.loads(first.stdout)
    second = json.loads(
        ready_cli.run(
            "events", "dead-letters", "--limit", "2", "--after", str(page["next_after"]), "--json"
        ).stdout
    )
    last = json.loads(
        ready_cli.run(
            "events", "dead-letters", "--limit", "2", "--after", str(second["next_after"]), "--json"
        ).stdout
    )
    text = ready_cli.run("events", "dead-letters", "--limit", "2").stdout

    newest_first = ids[::-1]
    assert [d["id"] for d in page["dead_letters"]] == newest_first[:2] and page["total"] == 5
    assert [d["id"] for d in second["dead_letters"]] == newest_first[2:4]
    assert [d["id"] for d in last["dead_letters"]] == newest_first[4:] and last["next_after"] is None
    assert text.splitlines()[0] == "5 dead letters not yet replayed"
    assert text.splitlines()[-1] == f"more: ledger events dead-letters --after {newest_first[1]}"


def test_reservations_are_looked_up_by_id_or_key_and_listed_a_page_at_a_time(ready_cli: Cli) -> None:
    made = [ok(ready_cli.run("validate", "--vcpus", "1", "--key", f"vm-{n}")).strip() for n in range(3)]
    ok(ready_cli.run("release", made[0]))

    by_id = json.loads(ok(ready_cli.run("reservations", made[0], "--json")))
    by_key = json.loads(ok(ready_cli.run("reservations", "--key", "vm-0", "--json")))
    held = json.loads(ok(ready_cli.run("reservations", "--status", "held", "--limit", "1", "--json")))
    rest = json.loads(
        ok(ready_cli.run("reservations", "--status", "held", "--after", held["next_after"], "--json"))
    )
    text = ok(ready_cli.run("reservations", "--host", ready_cli.host_id))

    assert by_id == by_key and (by_id["status"], by_id["idempotency_key"]) == ("released", "vm-0")
    assert by_id["charged"]["vcpus"] == 1
    assert held["total"] == 2 and [
        r["reservation_id"] for r in held["reservations"] + rest["reservations"]
    ] == sorted(made[1:])
    assert rest["next_after"] is None
    assert text.splitlines()[0] == "3 reservations" and len(text.splitlines()) == 4
    missing = one_line_error(ready_cli.run("reservations", "--key", "vm-9"), 4)
    assert "no reservation on host" in missing and "'vm-9'" in missing
