"""Retention: deleting what the ledger no longer needs, in small batches that never hold the write lock long.

Each kind of row goes after its own number of days (0 keeps it forever):

- `processed_events`: an event id only de-duplicates redeliveries, so it goes once it is older than its
  retention AND the durable consumer's low-water mark is at or past its stream sequence (the stream will
  not deliver it again), and never while it is inside the stream's duplicate window. Events applied outside
  a stream (`stream_seq` NULL: a file, a dead-letter replay) go by age alone. A copy that still arrives
  later is harmless: events carry full records and per-entity versions, and the entity's row (or its
  tombstone, for as long as it is kept) keeps the version, so the copy reads as `stale` and changes nothing.
- tombstones (`deleted` instances, volumes, images) by `updated_at`, never sooner than the event ids and
  the dead letters (kept forever while those are): the version they keep is the last word on a deleted
  entity, and a replayed dead letter carries no event id. Only a copy arriving after they went would count
  as new. Each delete takes its hosts' locks, as every writer of their entities does.
- `reservations`: ended ones (consumed, released, expired) by `ended_at` (and `expires_at`, which the
  search runs on), with the `placements` row of their idempotency key. A held one never goes, even long
  past its TTL: only the sweep under the host lock may end it, since it still counts in the host's
  running totals.
- `allocation_log` by `at`, `dead_letters` by `created_at`.

None of these rows is what the running totals count, so `ledger_drift` is the same before and after.

A batch picks its keys in a read transaction (on SQLite it takes no write lock, so admission never waits
behind the search), then deletes them by key in a short write transaction that checks the rule again: a
row that stopped qualifying meanwhile stays. Every search runs on an index, so a run that finds nothing
reads a little of each, not a table kept for weeks: event ids in stream order, history and
dead letters in id order (both age along it). Ended reservations and tombstones are the exceptions: no
index leads to them, so each run reads `reservations` and the three entity tables once (bench/fleet.py
measures it at a million instances) instead of adding an index every write of theirs pays for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import Column, Connection, Select, Table, delete, func, select, true, tuple_
from sqlalchemy.sql.elements import ColumnElement

from ledger.config import SETTINGS
from ledger.core.errors import UnknownHost
from ledger.core.results import CONSUMED, EXPIRED, RELEASED
from ledger.store.database import Database
from ledger.store.journal import dead_letters, last_stream_seq, processed_events
from ledger.store.sql import allocation_log, images, instances, placements, reservations, volumes

DAY_S = 86_400.0
BATCH = 1000
BACKGROUND_MAX_BATCHES = 50  # per table and run: `ledger serve` leaves any backlog to its next run
_ENTITIES = (instances, volumes, images)  # the kinds whose deletion leaves a tombstone
TABLES = (
    "processed_events",
    "reservations",
    "placements",
    "allocation_log",
    "dead_letters",
    *(table.name for table in _ENTITIES),
)
# each table's field of Limits (and, prefixed `retention_`, its setting); placements go with reservations
_DAYS = {
    "processed_events": "processed_days",
    "reservations": "reservations_days",
    "placements": "reservations_days",
    "allocation_log": "history_days",
    "dead_letters": "dead_letters_days",
    **{table.name: "tombstones_days" for table in _ENTITIES},
}


class RetentionSettings(Protocol):
    """The settings retention reads (`ledger.config.Settings` has them)."""

    @property
    def retention_processed_days(self) -> float: ...
    @property
    def retention_reservations_days(self) -> float: ...
    @property
    def retention_history_days(self) -> float: ...
    @property
    def retention_dead_letters_days(self) -> float: ...

    @property
    def retention_tombstones_days(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Days each kind of row is kept; 0 keeps it forever."""

    processed_days: float
    reservations_days: float
    history_days: float
    dead_letters_days: float
    tombstones_days: float

    @classmethod
    def of(cls, settings: RetentionSettings) -> Limits:
        return cls(
            settings.retention_processed_days,
            settings.retention_reservations_days,
            settings.retention_history_days,
            settings.retention_dead_letters_days,
            settings.retention_tombstones_days,
        )

    @classmethod
    def defaults(cls) -> Limits:
        """The retention a ledger with no configuration runs with (the settings registry's defaults)."""
        return cls.of(
            SimpleNamespace(**{s.key: s.default for s in SETTINGS if s.key.startswith("retention_")})
        )


@dataclass(frozen=True, slots=True)
class PruneReport:
    """Rows deleted per table (in a dry run: that would be), and how the work was cut up."""

    deleted: dict[str, int]
    kept_forever: Mapping[str, str]  # table → the setting at 0 that keeps its rows forever
    dry_run: bool = False
    batches: int = 0  # write transactions
    longest_batch_s: float = 0.0  # the longest of them, lock wait included
    complete: bool = True  # False: `max_batches` stopped it, maybe with eligible rows left

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": dict(self.deleted),
            "total": self.total,
            "kept_forever": dict(self.kept_forever),
            "batches": self.batches,
            "longest_batch_ms": round(self.longest_batch_s * 1000, 3),
            "complete": self.complete,
        }


@dataclass(frozen=True, slots=True)
class _Rule:
    """The rows of `table` that may go (`where`), and how a batch looks for them on an index. With a
    `head` (a scope, and an order along which its rows age), a search reads only the `batch` oldest rows
    in scope and takes those old enough; without one, `where` itself is an indexed search. Reservations
    also name their placements. With `host` (the table's host column; `key` is then unique per host), a
    delete first takes the lock of every host in its batch, as every writer of their entities does: a
    tombstone is read and rewritten under it when its id comes back."""

    table: Table
    key: Column[Any]
    where: ColumnElement[bool]
    head: tuple[ColumnElement[bool], Column[Any]] | None = None
    placements: ColumnElement[bool] | None = None
    host: Column[Any] | None = None

    def candidates(self, batch: int) -> Select[Any]:
        """The next batch's rows: (key,), or (host, key) with `host`."""
        columns = (self.key,) if self.host is None else (self.host, self.key)
        if self.head is None:
            return select(*columns).where(self.where).limit(batch)
        scope, order = self.head
        oldest = select(self.key).where(scope).order_by(order).limit(batch)
        return select(*columns).where(self.key.in_(oldest), self.where)


@dataclass(slots=True)
class _Tally:
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    longest: float = 0.0
    complete: bool = True


class Retention:
    """Prunes one ledger database. `consumer` is the durable consumer whose low-water mark bounds the event
    ids that may go; `duplicate_window_s` is the stream's duplicate window (the bus's setting: the store
    does not import the bus, so its callers pass it in)."""

    def __init__(self, db: Database, *, consumer: str, duplicate_window_s: float) -> None:
        self.db = db
        self.consumer = consumer
        self.duplicate_window_s = duplicate_window_s

    def prune_once(self, limits: Limits) -> PruneReport:
        """One background run, for `ledger serve` to call from a thread every `prune_interval` seconds: at
        most BACKGROUND_MAX_BATCHES batches of BATCH rows per table and host."""
        return self.prune(limits, batch=BATCH, max_batches=BACKGROUND_MAX_BATCHES)

    def prune(
        self, limits: Limits, *, batch: int = BATCH, max_batches: int | None = None, dry_run: bool = False
    ) -> PruneReport:
        """Delete what `limits` lets go, `batch` rows per write transaction, at most `max_batches` of them
        per table (None: until nothing is left); `dry_run` only counts."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        rules, kept = self._rules(limits)
        tally = _Tally()
        for rule in rules:
            if dry_run:
                self._count(rule, tally)
            else:
                self._drain(rule, batch, max_batches, tally)
        return PruneReport(tally.deleted, kept, dry_run, tally.batches, tally.longest, tally.complete)

    def _rules(self, limits: Limits) -> tuple[list[_Rule], dict[str, str]]:
        now = self.db.clock()
        rules: list[_Rule] = []
        kept: dict[str, str] = {}
        for name in TABLES:
            limit = _DAYS[name]
            if limit == "tombstones_days" and limits.dead_letters_days <= 0:
                limit = "dead_letters_days"  # tombstones stay while dead letters could bring them back
            if getattr(limits, limit) <= 0:
                kept[name] = f"retention_{limit}"
        if limits.processed_days > 0:
            with self.db.read() as conn:
                position = last_stream_seq(conn, self.consumer)
            e = processed_events.c
            old = e.processed_at < _before(now, max(limits.processed_days * DAY_S, self.duplicate_window_s))
            streamed = e.stream_seq <= position
            rules.append(_Rule(processed_events, e.event_id, old & streamed, (streamed, e.stream_seq)))
            rules.append(_Rule(processed_events, e.event_id, old & e.stream_seq.is_(None)))
        if limits.reservations_days > 0:  # one pass: a rule per host cost 5 s a run at 10,000 hosts
            r = reservations.c
            cutoff = _before(now, limits.reservations_days * DAY_S)
            ended = (
                r.status.in_((CONSUMED, RELEASED, EXPIRED)) & (r.expires_at < cutoff) & (r.ended_at < cutoff)
            )
            of_ended = placements.c.reservation_id.in_(select(r.reservation_id).where(ended))
            rules.append(_Rule(reservations, r.reservation_id, ended, placements=of_ended))
        if limits.tombstones_days > 0 and limits.dead_letters_days > 0:
            # never before the event ids (a redelivered copy is a duplicate by its id while that is kept)
            # nor the dead letters (a replayed one carries no id: only the tombstone's version stops it)
            days = max(limits.tombstones_days, limits.processed_days, limits.dead_letters_days)
            cutoff = _before(now, days * DAY_S)
            for table in _ENTITIES:  # one pass over each table: no index leads to its tombstones
                t = table.c
                gone = t.deleted & (t.updated_at < cutoff)
                rules.append(_Rule(table, table.primary_key.columns.values()[1], gone, host=t.host_id))
        if limits.history_days > 0:
            a = allocation_log.c
            old = a.at < _before(now, limits.history_days * DAY_S)
            rules.append(_Rule(allocation_log, a.id, old, (true(), a.id)))
        if limits.dead_letters_days > 0:
            d = dead_letters.c
            old = d.created_at < _before(now, limits.dead_letters_days * DAY_S)
            rules.append(_Rule(dead_letters, d.id, old, (true(), d.id)))
        return rules, kept

    def _count(self, rule: _Rule, tally: _Tally) -> None:
        with self.db.read() as conn:
            tally.deleted[rule.table.name] += _count(conn, rule.table, rule.where)
            if rule.placements is not None:
                tally.deleted["placements"] += _count(conn, placements, rule.placements)

    def _drain(self, rule: _Rule, batch: int, max_batches: int | None, tally: _Tally) -> None:
        done = 0
        while max_batches is None or done < max_batches:
            with self.db.read() as conn:
                found = [tuple(row) for row in conn.execute(rule.candidates(batch))]
            if not found:
                return
            started = time.perf_counter()
            with self.db.transaction() as tx:
                writer = tx.conn
                assert writer is not None
                if rule.host is None:
                    chosen = rule.key.in_([row[0] for row in found])
                else:
                    try:
                        tx.lock_all(row[0] for row in found)  # in sorted order, as every writer locks
                    except UnknownHost:  # removed meanwhile, and its rows with it: the next run looks again
                        return
                    chosen = tuple_(rule.host, rule.key).in_(found)
                statement = delete(rule.table).where(chosen, rule.where)
                if rule.placements is None:
                    gone = writer.execute(statement.returning(rule.key)).all()
                else:
                    gone = writer.execute(statement.returning(rule.key, reservations.c.idempotency_key)).all()
                    tally.deleted["placements"] += _delete_placements(writer, gone)
            tally.longest = max(tally.longest, time.perf_counter() - started)
            tally.deleted[rule.table.name] += len(gone)
            tally.batches += 1
            done += 1
            if len(gone) < batch:  # the search ran out of rows old enough
                return
        tally.complete = False


def _before(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)


def _count(conn: Connection, table: Table, where: ColumnElement[bool]) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())


def _delete_placements(conn: Connection, gone: Sequence[Sequence[Any]]) -> int:
    """The `place` keys of the reservations just deleted: a retry with one then holds afresh, instead of
    being sent to a host that no longer knows the key."""
    keys = [row[1] for row in gone if row[1] is not None]
    if not keys:
        return 0
    ids = [row[0] for row in gone]
    p = placements.c
    statement = delete(placements).where(p.idempotency_key.in_(keys), p.reservation_id.in_(ids))
    return conn.execute(statement).rowcount
