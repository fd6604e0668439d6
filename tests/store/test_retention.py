"""Retention on SQLite and PostgreSQL: what pruning deletes, in what steps, and what it never touches.

Pruning is database-wide, so each test here has a database of its own: in the shared session databases it
would delete other tests' rows. The `ledger` fixture asserts after every test that the running totals still
equal the recomputed sums.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ledger.bus.jetstream import DUPLICATE_WINDOW_S, DURABLE
from ledger.cli.main import main
from ledger.core.charges import AllocationRequest, Ask
from ledger.core.records import ImageRecord, InstanceRecord, VolumeRecord
from ledger.core.resources import ResourceType
from ledger.store import migrate
from ledger.store.entity_rows import Statements
from ledger.store.ledger import EventMark, Ledger
from ledger.store.retention import Limits, Retention
from tests.conftest import FakeClock, capacities

DAY = 86_400.0
GIB = 2**30
DEFAULTS = Limits.defaults()
SMALL = AllocationRequest(vcpus=1, memory_bytes=GIB)


@pytest.fixture(params=["sqlite", "postgresql"])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database for this test alone."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("pg_database_factory")()
    migrate.upgrade(url)
    return url


@pytest.fixture
def ledger(own_url: str, clock: FakeClock) -> Iterator[Ledger]:
    opened = Ledger.open(own_url, migrate=False, clock=clock)
    yield opened
    assert opened.drift() == [], "pruning moved what the running totals count"
    opened.close()


@pytest.fixture
def retention(ledger: Ledger) -> Retention:
    return Retention(ledger.db, consumer=DURABLE, duplicate_window_s=DUPLICATE_WINDOW_S)


@pytest.fixture
def host_id() -> str:
    return f"host-{uuid.uuid4().hex[:10]}"


def register(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(), {})


def rows(ledger: Ledger, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with ledger.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query), params)]


def count(ledger: Ledger, table: str) -> int:
    return int(rows(ledger, f"SELECT COUNT(*) FROM {table}")[0][0])


def statuses(ledger: Ledger, host_id: str) -> dict[str, str]:
    found = rows(ledger, "SELECT reservation_id, status FROM reservations WHERE host_id = :h", h=host_id)
    return dict(found)


def event_ids(ledger: Ledger) -> set[str]:
    return {row[0] for row in rows(ledger, "SELECT event_id FROM processed_events")}


def instance_event(
    ledger: Ledger, host_id: str, event_id: str, seq: int | None, instance: str, version: int, **fields: Any
) -> str:
    """Apply an instance event as the consumer does (its id and stream sequence recorded); the outcome."""
    mark = EventMark(event_id, "instance.updated", seq)
    record = InstanceRecord(id=instance, state=fields.pop("state", "Running"), **fields)
    return ledger.apply_instance(host_id, record, version=version, mark=mark).outcome


def handled(ledger: Ledger, *seqs: int) -> int:
    """The durable consumer records these stream sequences as handled; returns its low-water mark."""
    return ledger.advance_position(DURABLE, seqs)


# ---- reservations ---------------------------------------------------------------------------------------


def test_old_ended_reservations_go_and_a_held_one_never_does_even_long_past_its_ttl(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    expired = ledger.reserve(host_id, SMALL, ttl=60).reservation_id
    clock.advance(120)
    released = ledger.reserve(host_id, SMALL).reservation_id  # its lock sweeps `expired`
    ledger.release(released)
    consumed = ledger.reserve(host_id, SMALL).reservation_id
    ledger.apply_instance(host_id, InstanceRecord(id="vm", state="Running", reservation_id=consumed))
    forgotten = ledger.reserve(host_id, SMALL, ttl=60).reservation_id  # nobody sweeps this host again
    ended = {expired: "expired", released: "released", consumed: "consumed"}
    assert statuses(ledger, host_id) == {**ended, forgotten: "held"}
    clock.advance(30 * DAY)
    other = f"{host_id}-b"
    register(ledger, other)
    recent = ledger.reserve(other, SMALL).reservation_id
    ledger.release(recent)

    report = retention.prune(DEFAULTS)

    assert report.deleted["reservations"] == 3
    assert statuses(ledger, host_id) == {forgotten: "held"}
    assert statuses(ledger, other) == {recent: "released"}
    ledger.status(host_id, ResourceType.CPU)  # the sweep, not pruning, ends the forgotten hold
    assert statuses(ledger, host_id) == {forgotten: "expired"}


def test_a_place_key_goes_with_its_reservation_and_places_afresh_afterwards(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    first = ledger.place(Ask(SMALL, "place-key"))
    ledger.release(first.reservation_id)
    clock.advance(8 * DAY)

    report = retention.prune(DEFAULTS)

    assert (report.deleted["reservations"], report.deleted["placements"]) == (1, 1)
    again = ledger.place(Ask(SMALL, "place-key"))
    assert again.reservation_id != first.reservation_id and not again.replayed
    ledger.release(again.reservation_id)


# ---- processed events -----------------------------------------------------------------------------------


def test_event_ids_go_only_when_old_and_at_or_below_the_consumer_position(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    instance_event(ledger, host_id, "e1", 1, "vm-1", 1)
    instance_event(ledger, host_id, "e2", 2, "vm-2", 1)
    instance_event(ledger, host_id, "from-a-file", None, "vm-3", 1)
    instance_event(ledger, host_id, "e5", 5, "vm-5", 1)
    clock.advance(8 * DAY)
    instance_event(ledger, host_id, "e3", 3, "vm-4", 1)
    assert handled(ledger, 1, 2, 3, 5) == 3  # 4 is not handled yet: 5 is above the mark

    report = retention.prune(DEFAULTS)

    assert report.deleted["processed_events"] == 3
    assert event_ids(ledger) == {"e3", "e5"}  # e3: too young; e5: the consumer is not past it


def test_a_redelivery_inside_the_duplicate_window_is_still_a_duplicate(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    one_second = replace(DEFAULTS, processed_days=1 / DAY)
    register(ledger, host_id)
    assert instance_event(ledger, host_id, "e1", 1, "vm", 1, vcpus=2) == "applied"
    handled(ledger, 1)
    clock.advance(DUPLICATE_WINDOW_S - 1)

    assert retention.prune(one_second).deleted["processed_events"] == 0
    assert instance_event(ledger, host_id, "e1", 1, "vm", 1, vcpus=2) == "duplicate"

    clock.advance(2)
    assert retention.prune(one_second).deleted["processed_events"] == 1


def test_a_redelivered_event_whose_id_was_pruned_is_stale_and_changes_nothing(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    hold = ledger.reserve(host_id, SMALL).reservation_id
    events: list[tuple[str, str, int, dict[str, Any]]] = [
        ("a-created", "vm-a", 1, {"vcpus": 1, "memory_bytes": GIB, "reservation_id": hold}),
        ("a-resized", "vm-a", 2, {"vcpus": 4, "memory_bytes": 4 * GIB}),
        ("b-created", "vm-b", 1, {"vcpus": 2, "memory_bytes": 2 * GIB}),
    ]
    for seq, (event_id, instance, version, fields) in enumerate(events, 1):
        assert instance_event(ledger, host_id, event_id, seq, instance, version, **fields) == "applied"
    delete_b = EventMark("b-deleted", "instance.deleted", 4)
    assert ledger.delete_instance(host_id, "vm-b", version=2, mark=delete_b).outcome == "applied"
    handled(ledger, 1, 2, 3, 4)
    clock.advance(8 * DAY)
    report = retention.prune(DEFAULTS)
    assert (report.deleted["processed_events"], report.deleted["reservations"]) == (4, 1)

    def snapshot() -> Any:
        status = ledger.full_status(host_id)
        return (
            {r: (s.allocated, s.pending) for r, s in status.resources.items()},
            rows(ledger, "SELECT instance_id, state, vcpus, version, deleted FROM instances ORDER BY 1"),
            count(ledger, "allocation_log"),
            count(ledger, "reservations"),
        )

    before = snapshot()
    for seq, (event_id, instance, version, fields) in enumerate(events, 1):
        assert instance_event(ledger, host_id, event_id, seq, instance, version, **fields) == "stale"
    assert ledger.delete_instance(host_id, "vm-b", version=2, mark=delete_b).outcome == "stale"
    assert snapshot() == before


# ---- tombstones -----------------------------------------------------------------------------------------


def _entities(ledger: Ledger, host_id: str) -> set[tuple[str, str, bool]]:
    found = set()
    for table, key in (("instances", "instance_id"), ("volumes", "volume_id"), ("images", "image_id")):
        query = f"SELECT {key}, deleted FROM {table} WHERE host_id = :h"
        found |= {(table, str(name), bool(deleted)) for name, deleted in rows(ledger, query, h=host_id)}
    return found


def test_old_tombstones_go_and_live_or_stopped_entities_never_do(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    for name in ("gone", "recent"):
        ledger.apply_instance(host_id, InstanceRecord(id=f"vm-{name}", state="Running", vcpus=1), version=1)
        ledger.apply_volume(host_id, VolumeRecord(id=f"vol-{name}", size_bytes=GIB), version=1)
        ledger.apply_image(host_id, ImageRecord(id=f"img-{name}", size_bytes=GIB), version=1)
    ledger.apply_instance(host_id, InstanceRecord(id="vm-stopped", state="Stopped", vcpus=1), version=1)
    ledger.apply_instance(host_id, InstanceRecord(id="vm-live", state="Running", vcpus=2), version=1)

    def delete(name: str) -> None:
        ledger.delete_instance(host_id, f"vm-{name}", version=2)
        ledger.delete_volume(host_id, f"vol-{name}", version=2)
        ledger.delete_image(host_id, f"img-{name}", version=2)

    delete("gone")
    clock.advance(DEFAULTS.tombstones_days * DAY - 3600)
    delete("recent")
    assert retention.prune(DEFAULTS).total == 0, "a tombstone went before its retention"
    clock.advance(3600 + 1)
    report = retention.prune(DEFAULTS)
    assert {t: report.deleted[t] for t in ("instances", "volumes", "images")} == {
        "instances": 1,
        "volumes": 1,
        "images": 1,
    }
    assert _entities(ledger, host_id) == {
        ("instances", "vm-recent", True),
        ("volumes", "vol-recent", True),
        ("images", "img-recent", True),
        ("instances", "vm-stopped", False),
        ("instances", "vm-live", False),
    }
    clock.advance(10 * 365 * DAY)  # live and stopped entities stay, however old
    retention.prune(DEFAULTS)
    assert {name for _, name, deleted in _entities(ledger, host_id) if not deleted} == {
        "vm-stopped",
        "vm-live",
    }
    assert ledger.full_status(host_id).resources[ResourceType.CPU].allocated == 2


def test_a_tombstone_outlives_the_event_ids_that_deleted_it(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    """With tombstones kept fewer days than event ids, a redelivery the stream could still make would be
    let in once the tombstone went: the tombstone stays as long as the ids."""
    register(ledger, host_id)
    assert instance_event(ledger, host_id, "created", 1, "vm", 1, vcpus=1) == "applied"
    gone = EventMark("deleted", "instance.deleted", 2)
    assert ledger.delete_instance(host_id, "vm", version=2, mark=gone).outcome == "applied"
    handled(ledger, 1, 2)
    short = replace(DEFAULTS, processed_days=7.0, tombstones_days=1.0, dead_letters_days=1.0)
    clock.advance(3 * DAY)
    assert retention.prune(short).deleted["instances"] == 0
    clock.advance(5 * DAY)
    report = retention.prune(short)
    assert (report.deleted["processed_events"], report.deleted["instances"]) == (2, 1)


def test_a_tombstone_outlives_the_dead_letters_a_replay_could_bring_back(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    """A replayed dead letter is applied without an event id: only the tombstone's version keeps it out,
    so the tombstone stays as long as the dead letters (forever when they are kept forever)."""
    register(ledger, host_id)
    ledger.apply_instance(host_id, InstanceRecord(id="vm", state="Running", vcpus=2), version=1)
    ledger.delete_instance(host_id, "vm", version=2)
    limits = replace(DEFAULTS, tombstones_days=30.0, dead_letters_days=90.0)
    clock.advance(31 * DAY)
    assert retention.prune(limits).deleted["instances"] == 0
    late = InstanceRecord(id="vm", state="Running", vcpus=2)  # the creation, replayed from a dead letter
    assert ledger.apply_instance(host_id, late, version=1).outcome == "stale"
    forever = replace(limits, dead_letters_days=0.0)
    clock.advance(10 * 365 * DAY)
    report = retention.prune(forever)
    assert report.deleted["instances"] == 0
    assert report.to_dict()["kept_forever"]["instances"] == "retention_dead_letters_days"  # who keeps it
    assert ledger.full_status(host_id).resources[ResourceType.CPU].allocated == 0
    assert retention.prune(limits).deleted["instances"] == 1


def test_pruning_a_tombstone_waits_for_the_host_lock_of_an_event_bringing_it_back(
    ledger: Ledger,
    retention: Retention,
    clock: FakeClock,
    host_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An image id pulled again months later: the event reads the tombstone under the host's lock, and a
    prune runs right then. It must wait for that lock and then find the row no longer a tombstone; had it
    deleted the row between the event's read and its rewrite, the rewrite would hit nothing and the host's
    totals would count an image that is not there (PostgreSQL; SQLite's one writer orders them anyway)."""
    register(ledger, host_id)
    ledger.apply_image(host_id, ImageRecord(id="img", size_bytes=GIB), version=1)
    ledger.delete_image(host_id, "img", version=2)
    clock.advance((DEFAULTS.dead_letters_days + 1) * DAY)
    pruned: list[Any] = []
    threads: list[threading.Thread] = []
    read = Statements.load

    def read_then_prune(self: Statements, conn: Any, ids: Any) -> Any:
        rows = read(self, conn, ids)
        if self.kind.table.name == "images" and not threads:
            threads.append(threading.Thread(target=lambda: pruned.append(retention.prune(DEFAULTS))))
            threads[0].start()
            threads[0].join(timeout=1.0)  # long enough to delete, had it not waited for the host
        return rows

    monkeypatch.setattr(Statements, "load", read_then_prune)
    assert ledger.apply_image(host_id, ImageRecord(id="img", size_bytes=GIB), version=3).outcome == "applied"
    threads[0].join(timeout=30)
    assert not threads[0].is_alive()
    assert pruned[0].deleted["images"] == 0
    assert _entities(ledger, host_id) == {("images", "img", False)}
    assert ledger.drift() == []
    assert ledger.full_status(host_id).disk_breakdown.images_bytes == GIB


def test_0_keeps_tombstones_forever(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, InstanceRecord(id="vm", state="Running", vcpus=1), version=1)
    ledger.delete_instance(host_id, "vm", version=2)
    clock.advance(10 * 365 * DAY)
    report = retention.prune(replace(DEFAULTS, tombstones_days=0.0))
    assert report.deleted["instances"] == 0
    assert {"instances", "volumes", "images"} <= set(report.kept_forever)
    assert _entities(ledger, host_id) == {("instances", "vm", True)}


# ---- dead letters and history ---------------------------------------------------------------------------


def test_dead_letters_go_after_their_retention(
    ledger: Ledger, retention: Retention, clock: FakeClock
) -> None:
    old = ledger.letters.record(payload=b"{", reason="not JSON")
    young = ledger.letters.record(payload=b"[", reason="not an object")
    with ledger.engine.begin() as conn:  # dead letters are stamped by the machine's clock, not the ledger's
        conn.execute(
            text("UPDATE dead_letters SET created_at = :t WHERE id = :id"),
            {"t": (clock() - timedelta(days=91)).replace(tzinfo=None), "id": old},
        )

    assert retention.prune(DEFAULTS).deleted["dead_letters"] == 1
    assert [letter.id for letter in ledger.letters.page()] == [young]


def test_history_is_kept_forever_with_0_and_otherwise_for_its_days(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, InstanceRecord(id="old", state="Running", vcpus=2))
    old_rows = count(ledger, "allocation_log")
    clock.advance(400 * DAY)
    ledger.apply_instance(host_id, InstanceRecord(id="new", state="Running", vcpus=2))
    logged = count(ledger, "allocation_log")

    kept = retention.prune(DEFAULTS)
    assert kept.deleted["allocation_log"] == 0 and "allocation_log" in kept.kept_forever
    assert count(ledger, "allocation_log") == logged

    pruned = retention.prune(replace(DEFAULTS, history_days=30))
    assert pruned.deleted["allocation_log"] == old_rows > 0
    assert count(ledger, "allocation_log") == logged - old_rows


# ---- how it runs ----------------------------------------------------------------------------------------


def test_each_write_transaction_deletes_one_small_batch(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    for seq in range(1, 26):
        instance_event(ledger, host_id, f"e{seq}", seq, f"vm-{seq}", 1)
        ledger.release(ledger.reserve(host_id, SMALL).reservation_id)
    handled(ledger, *range(1, 26))
    clock.advance(8 * DAY)

    events_only = replace(DEFAULTS, reservations_days=0)
    steps = [retention.prune(events_only, batch=10, max_batches=1) for _ in range(4)]
    assert [s.deleted["processed_events"] for s in steps] == [10, 10, 5, 0]
    assert [s.complete for s in steps] == [False, False, True, True]
    assert count(ledger, "reservations") == 25

    report = retention.prune(replace(DEFAULTS, processed_days=0), batch=10)
    assert (report.deleted["reservations"], report.batches, report.complete) == (25, 3, True)
    assert count(ledger, "processed_events") == count(ledger, "reservations") == 0


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(
    ledger: Ledger, retention: Retention, clock: FakeClock, host_id: str
) -> None:
    register(ledger, host_id)
    instance_event(ledger, host_id, "e1", 1, "vm", 1)
    handled(ledger, 1)
    ledger.release(ledger.place(Ask(SMALL, "dry-key")).reservation_id)
    ledger.release(ledger.reserve(host_id, SMALL).reservation_id)
    clock.advance(8 * DAY)
    tables = ("processed_events", "reservations", "placements")
    before = [count(ledger, t) for t in tables]

    dry = retention.prune(DEFAULTS, dry_run=True)
    assert [count(ledger, t) for t in tables] == before
    real = retention.prune(DEFAULTS)

    assert dry.dry_run and not real.dry_run
    assert dry.deleted == real.deleted
    assert [real.deleted[t] for t in tables] == [1, 2, 1]


def test_ledger_db_prune_deletes_what_the_settings_let_go(
    own_url: str, host_id: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LEDGER_CONFIG", "LEDGER_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for days in ("PROCESSED", "RESERVATIONS", "HISTORY", "DEAD_LETTERS", "TOMBSTONES", "USAGE"):
        monkeypatch.delenv(f"LEDGER_RETENTION_{days}_DAYS", raising=False)
    month_ago = FakeClock(datetime.now(UTC) - timedelta(days=30))
    old = Ledger.open(own_url, migrate=False, clock=month_ago)
    register(old, host_id)
    instance_event(old, host_id, "e1", 1, "vm", 1)
    handled(old, 1)
    old.release(old.reserve(host_id, SMALL).reservation_id)

    def prune(*flags: str) -> int:
        return main(["db", "prune", *flags, "--database-url", own_url])

    assert prune("--dry-run", "--json") == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True
    assert dry["deleted"] | {"total": dry["total"]} == {
        "processed_events": 1,
        "reservations": 1,
        "placements": 0,
        "allocation_log": 0,
        "dead_letters": 0,
        "instances": 0,
        "volumes": 0,
        "images": 0,
        "usage_hourly": 0,
        "host_usage_hourly": 0,
        "usage_latest": 0,
        "total": 2,
    }
    assert dry["kept_forever"] == {"allocation_log": "retention_history_days"}

    assert prune() == 0
    out = capsys.readouterr().out
    assert "reservations              1 deleted" in out
    assert "kept forever (retention_history_days = 0)" in out
    assert count(old, "processed_events") == count(old, "reservations") == 0
    assert old.drift() == []
    old.close()
