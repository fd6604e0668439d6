"""Migrations on a fresh database of each engine: up to head, down to base and back revision by revision,
models and migrations agreeing, the reporting views created and dropped, concurrent upgrades serialized."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from ledger.store import migrate
from ledger.store.engine import make_engine
from ledger.store.ledger import Ledger
from ledger.store.views import current

TABLES = {
    "hosts",
    "capacities",
    "instances",
    "volumes",
    "images",
    "oci_cache",
    "reservations",
    "allocation_log",
    "consumer_positions",
    "processed_events",
    "dead_letters",
    "placements",
    "usage_latest",
    "usage_samples",
    "usage_hourly",
    "host_usage_hourly",
}
VIEWS = {name for name, _ in current("sqlite")}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database nobody has migrated yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    factory: Callable[[], str] = request.getfixturevalue("pg_database_factory")
    return factory()


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()) - {"alembic_version"}, set(inspector.get_view_names())
    finally:
        engine.dispose()


def _current(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


def _revisions_base_to_head() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def test_the_views_list_is_the_same_on_both_engines() -> None:
    assert [n for n, _ in current("sqlite")] == [n for n, _ in current("postgresql")]
    assert {"resource_status", "instance_allocations", "disk_breakdown", "allocation_history"} <= VIEWS


def test_upgrade_from_empty_to_head_creates_every_table_and_view(fresh_url: str) -> None:
    assert _schema(fresh_url) == (set(), set())
    migrate.upgrade(fresh_url)
    assert _current(fresh_url) == migrate.head_revision()
    assert _schema(fresh_url) == (TABLES, VIEWS)


def test_models_and_migrations_agree(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    assert migrate.check(fresh_url) is None


def test_downgrade_to_base_removes_every_table_and_view(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    migrate.downgrade(fresh_url, "base")
    assert _current(fresh_url) is None
    assert _schema(fresh_url) == (set(), set())


def test_walk_down_and_up_revision_by_revision(fresh_url: str) -> None:
    revisions = _revisions_base_to_head()
    assert revisions[-1] == migrate.head_revision()
    for revision in revisions:
        migrate.upgrade(fresh_url, revision)
        assert _current(fresh_url) == revision
    for revision in reversed([None, *revisions[:-1]]):
        migrate.downgrade(fresh_url, revision or "base")
        assert _current(fresh_url) == revision
    for revision in revisions:
        migrate.upgrade(fresh_url, revision)
    assert migrate.check(fresh_url) is None
    assert _schema(fresh_url) == (TABLES, VIEWS)


def test_upgrade_twice_is_a_no_op(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    migrate.upgrade(fresh_url)
    assert _current(fresh_url) == migrate.head_revision()


def test_ledger_open_migrates_a_fresh_database(fresh_url: str) -> None:
    ledger = Ledger.open(fresh_url)
    try:
        assert ledger.host_ids() == []
        assert ledger.drift() == []
    finally:
        ledger.close()
    assert _current(fresh_url) == migrate.head_revision()


def _upgrade_worker(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        migrate.upgrade(url)
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_concurrent_upgrades_of_a_fresh_database_both_succeed(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        url = request.getfixturevalue("pg_database_factory")()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_upgrade_worker, args=(url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok", "ok"]
    assert _current(url) == migrate.head_revision()
    assert migrate.check(url) is None
