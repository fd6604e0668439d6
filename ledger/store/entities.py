"""Entity records from lifecycle events: instances, volumes, images and the OCI cache.

Each event carries the entity's full current record and a per-entity version. Applying one upserts the
record (a deleted entity keeps a tombstone, so late events stay out) under the host's lock, moves the
host's totals by the difference it makes, and records the event id, all in one transaction: a redelivery
is a duplicate, an older version is stale.

Changes are applied as a list, in order (a single call is a list of one): the event ids and the stored
rows are read with one statement per table, the changes are worked out in memory, and the rows written
with one statement per table, so the cost of a transaction grows with the number of tables it touches,
not of events (on PostgreSQL each statement is a round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from ledger.core.charges import DefaultBandwidth
from ledger.core.errors import InvalidRequest
from ledger.core.records import InstanceRecord
from ledger.core.results import ApplyResult
from ledger.store import journal
from ledger.store.database import Database
from ledger.store.entity_rows import BANDWIDTH_COLUMNS, KINDS, Record, Statements, recharged, values
from ledger.store.hosts import Hosts
from ledger.store.journal import EventMark
from ledger.store.reservations import Reservations
from ledger.store.sql import instances
from ledger.store.totals import difference, instance_usage
from ledger.store.tx import LockedHost, Tx


@dataclass(frozen=True, slots=True)
class Change:
    """One entity's new full record (None: deleted, a tombstone), its version, and the event it comes
    from. A change without a version supersedes whatever is stored."""

    host_id: str
    kind: str  # instance, volume, image, oci_cache
    entity_id: str
    record: Record | None
    version: int | None = None
    action: str = "updated"
    mark: EventMark | None = None


class Entities:
    """Applies entity records to the ledger (see the module docstring)."""

    def __init__(
        self, db: Database, hosts: Hosts, reservations: Reservations, defaults: DefaultBandwidth
    ) -> None:
        self.db = db
        self.hosts = hosts
        self.reservations = reservations
        self.defaults = defaults
        self._statements = {name: Statements(kind) for name, kind in KINDS.items()}
        self._duplicates = (IntegrityError, db.engine.dialect.loaded_dbapi.IntegrityError)
        self._defaulted = select(instances).where(
            instances.c.host_id == bindparam("b_host"), instances.c.defaulted != "", ~instances.c.deleted
        )
        self._recharge = (
            update(instances)
            .where(instances.c.host_id == bindparam("b_host"), instances.c.instance_id == bindparam("b_key"))
            .values({c: bindparam(f"v_{c}") for c in BANDWIDTH_COLUMNS})
        )

    def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply `changes` in order in one transaction (the current batch's, inside `Database.batch`)."""
        try:
            with self.db.transaction() as tx:
                return self.apply_in(tx, changes)
        except self._duplicates:
            # Another writer recorded the same event id first (a concurrent redelivery): it is applied once.
            # Inside a batch the whole transaction is void, so the batch must be retried.
            marks = [c.mark for c in changes]
            if (
                len(changes) == 1
                and marks[0] is not None
                and not self.db.in_batch
                and self._recorded(marks[0])
            ):
                return [ApplyResult("duplicate", changes[0].entity_id, changes[0].version or 0)]
            raise

    def apply_in(self, tx: Tx, changes: Sequence[Change]) -> list[ApplyResult]:
        conn = tx.conn
        assert conn is not None
        for change in changes:
            _check_version(change.version)
        tx.lock_all({c.host_id for c in changes}, create=True)
        seen = journal.seen_many(tx, [c.mark.event_id for c in changes if c.mark is not None])
        rows: dict[tuple[str, tuple[str, ...]], dict[str, Any] | None] = {}
        for name, statements in self._statements.items():
            ids = [statements.identity(c.host_id, c.entity_id) for c in changes if c.kind == name]
            if ids:
                found = statements.load(conn, ids)
                rows.update({(name, i): found.get(i) for i in ids})
        stored = {key for key, row in rows.items() if row is not None}
        written: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        marks: list[tuple[EventMark, str, str, int, str]] = []
        results = []
        for change in changes:
            if change.mark is not None and change.mark.event_id in seen:
                results.append(ApplyResult("duplicate", change.entity_id, change.version or 0))
                continue
            statements = self._statements[change.kind]
            key = (change.kind, statements.identity(change.host_id, change.entity_id))
            result, record = self._one(tx, statements, change, rows[key])
            if record is not None:
                rows[key] = written[key] = record
            if change.mark is not None:
                seen.add(change.mark.event_id)
                marks.append((change.mark, change.host_id, change.entity_id, result.version, result.outcome))
            results.append(result)
        for name, statements in self._statements.items():
            mine = [(key, row) for key, row in written.items() if key[0] == name]
            statements.write(
                conn, [r for k, r in mine if k not in stored], [r for k, r in mine if k in stored]
            )
        journal.mark_many(tx, marks)
        return results

    def _one(
        self, tx: Tx, statements: Statements, change: Change, old: dict[str, Any] | None
    ) -> tuple[ApplyResult, dict[str, Any] | None]:
        """What one change does, given the entity's row as it stands: the outcome, and the new row."""
        version = change.version
        if version is None:
            version = (old["version"] + 1) if old is not None else 1
        if old is not None and version <= old["version"]:
            return ApplyResult("stale", change.entity_id, version), None
        host = tx.lock(change.host_id, create=True)
        if change.record is None:
            new = statements.tombstone()
        else:
            new = {
                **values(change.record, self.hosts.state(tx.cursor, host), self.defaults),
                "deleted": False,
            }
        record = statements.full_record(new, change.host_id, change.entity_id, version, self.db.clock())
        delta = difference(statements.kind.usage(record), statements.kind.usage(old))
        cause = change.mark.event_id if change.mark else "api"
        tx.move(host, delta)
        tx.log(host, change.kind, change.entity_id, change.action, cause, delta)
        if isinstance(change.record, InstanceRecord) and change.record.reservation_id:
            # the hold becomes the allocation in the same transaction: counted once, never twice or not at all
            self.reservations.consume(tx, host, change.record.reservation_id, change.entity_id, cause)
        return ApplyResult("applied", change.entity_id, version), record

    def recharge_defaults(self, tx: Tx, host: LockedHost, cause: str) -> None:
        """The host's capacities changed: charge every instance that left a bandwidth unstated the new
        default, so the totals are what they would be had the capacities come first."""
        assert tx.conn is not None
        state = self.hosts.state(tx.cursor, host)
        for old in tx.conn.execute(self._defaulted, {"b_host": host.host_id}).mappings().all():
            new = recharged(dict(old), state, self.defaults)
            if new == dict(old):
                continue
            delta = difference(instance_usage(new), instance_usage(old))
            params = {f"v_{c}": new[c] for c in BANDWIDTH_COLUMNS}
            tx.conn.execute(self._recharge, {"b_host": host.host_id, "b_key": old["instance_id"], **params})
            tx.move(host, delta)
            tx.log(host, "instance", old["instance_id"], "recharged", cause, delta)

    def _recorded(self, mark: EventMark) -> bool:
        with self.db.transaction() as tx:
            return bool(journal.seen_many(tx, [mark.event_id]))


def _check_version(version: int | None) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise InvalidRequest(f"version must be a whole number ≥ 0, got {version!r}", field="version")
