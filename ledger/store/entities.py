"""Entity records from lifecycle events: instances, volumes, images and the OCI cache.

Each event carries the entity's full current record and a per-entity version. Applying one upserts the
record (a deleted entity keeps a tombstone, so late events stay out) under the host's lock, moves the
host's totals by the difference it makes, and records the event id, all in one transaction: a redelivery
is a duplicate, an older version is stale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ledger.core.capacity import link_share
from ledger.core.charges import DefaultBandwidth
from ledger.core.errors import InvalidRequest
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import DELETED_STATE
from ledger.core.results import ApplyResult
from ledger.store import journal
from ledger.store.database import Database
from ledger.store.hosts import Hosts
from ledger.store.journal import EventMark
from ledger.store.reservations import Reservations
from ledger.store.sql import images, instances, oci_cache, volumes
from ledger.store.totals import RowLike, Totals, difference, instance_usage, sized_usage
from ledger.store.tx import LockedHost, Tx

Usage = Callable[[RowLike | None], Totals]
NewRow = Callable[[Tx, LockedHost], dict[str, Any]]  # the record's columns (None: a delete)


class Entities:
    """Applies entity records to the ledger (see the module docstring)."""

    def __init__(
        self, db: Database, hosts: Hosts, reservations: Reservations, defaults: DefaultBandwidth
    ) -> None:
        self.db = db
        self.hosts = hosts
        self.reservations = reservations
        self.defaults = defaults
        self._tables = {
            table.name: _EntityStatements(table, key)
            for table, key in (
                (instances, "instance_id"),
                (volumes, "volume_id"),
                (images, "image_id"),
                (oci_cache, "host_id"),
            )
        }
        self._duplicates = (IntegrityError, db.engine.dialect.loaded_dbapi.IntegrityError)
        self._defaulted = select(instances).where(
            instances.c.host_id == bindparam("b_host"), instances.c.defaulted != "", ~instances.c.deleted
        )
        self._recharge = (
            update(instances)
            .where(instances.c.host_id == bindparam("b_host"), instances.c.instance_id == bindparam("b_key"))
            .values({c: bindparam(f"v_{c}") for c in _BANDWIDTH_COLUMNS})
        )

    def apply_instance(
        self, host_id: str, record: InstanceRecord, version: int | None, action: str, mark: EventMark | None
    ) -> ApplyResult:
        """Record an instance's full current state; a `reservation_id` in it is consumed in the same
        transaction, so the hold becomes the allocation without being counted twice or not at all."""
        cause = mark.event_id if mark else "api"

        def row(tx: Tx, host: LockedHost) -> dict[str, Any]:
            state = self.hosts.state(tx.cursor, host)
            download, upload, disk_io, defaulted = self.defaults.fill(
                state,
                record.vcpus,
                record.network_download_bps,
                record.network_upload_bps,
                record.disk_io_bps,
            )
            return {
                "name": record.name or "",
                "state": record.state,
                "active": record.active,
                "vcpus": record.vcpus,
                "memory_bytes": record.memory_bytes,
                "overlay_bytes": record.overlay_bytes,
                "volume_overlay_bytes": record.volume_overlay_bytes,
                "volume_bytes": record.volume_bytes,
                "network_download_bps": download,
                "network_upload_bps": upload,
                "network_bps": link_share(download, upload),
                "disk_io_bps": disk_io,
                "gpu": record.gpu,
                "gpu_slots": record.gpu_slots,
                "reservation_id": record.reservation_id,
                "defaulted": ",".join(defaulted),
            }

        def consume(tx: Tx, host: LockedHost) -> None:
            if record.reservation_id:
                self.reservations.consume(tx, host, record.reservation_id, record.id, cause)

        return self._apply(
            host_id, instances, record.id, version, row, instance_usage, "instance", action, mark, consume
        )

    def apply_volume(
        self, host_id: str, record: VolumeRecord, version: int | None, action: str, mark: EventMark | None
    ) -> ApplyResult:
        values = {
            "name": record.name or "",
            "size_bytes": record.size_bytes,
            "attached_to": record.attached_to,
        }
        return self._apply(
            host_id, volumes, record.id, version, _fixed(values), _VOLUMES, "volume", action, mark
        )

    def apply_image(
        self, host_id: str, record: ImageRecord, version: int | None, mark: EventMark | None
    ) -> ApplyResult:
        values = {"name": record.name or "", "size_bytes": record.size_bytes}
        return self._apply(
            host_id, images, record.id, version, _fixed(values), _IMAGES, "image", "pulled", mark
        )

    def apply_oci_cache(
        self, host_id: str, record: OciCacheRecord, version: int | None, mark: EventMark | None
    ) -> ApplyResult:
        values = {"total_bytes": record.total_bytes}
        return self._apply(
            host_id, oci_cache, host_id, version, _fixed(values), _OCI, "oci_cache", "measured", mark
        )

    def delete(
        self, host_id: str, kind: str, entity_id: str, version: int | None, mark: EventMark | None
    ) -> ApplyResult:
        """Leave a tombstone of an instance, volume or image: it holds nothing, and older events stay out."""
        table, usage = {
            "instance": (instances, instance_usage),
            "volume": (volumes, _VOLUMES),
            "image": (images, _IMAGES),
        }[kind]
        return self._apply(host_id, table, entity_id, version, None, usage, kind, "deleted", mark)

    def recharge_defaults(self, tx: Tx, host: LockedHost, cause: str) -> None:
        """The host's capacities changed: charge every instance that left a bandwidth unstated the new
        default, so the totals are what they would be had the capacities come first."""
        assert tx.conn is not None
        state = self.hosts.state(tx.cursor, host)
        rows = tx.conn.execute(self._defaulted, {"b_host": host.host_id}).mappings().all()
        for old in rows:
            names = set(old["defaulted"].split(","))
            download, upload, disk_io, _ = self.defaults.fill(
                state,
                old["vcpus"],
                None if "network_download_bps" in names else old["network_download_bps"],
                None if "network_upload_bps" in names else old["network_upload_bps"],
                None if "disk_io_bps" in names else old["disk_io_bps"],
            )
            new = {
                **old,
                "network_download_bps": download,
                "network_upload_bps": upload,
                "network_bps": link_share(download, upload),
                "disk_io_bps": disk_io,
            }
            if new == dict(old):
                continue
            delta = difference(instance_usage(new), instance_usage(old))
            tx.conn.execute(
                self._recharge,
                {
                    "b_host": host.host_id,
                    "b_key": old["instance_id"],
                    **{f"v_{c}": new[c] for c in _BANDWIDTH_COLUMNS},
                },
            )
            tx.move(host, delta)
            tx.log(host, "instance", old["instance_id"], "recharged", cause, delta)

    def _apply(
        self,
        host_id: str,
        table: Table,
        entity_id: str,
        version: int | None,
        new_row: NewRow | None,
        usage: Usage,
        kind: str,
        action: str,
        mark: EventMark | None,
        after: Callable[[Tx, LockedHost], None] | None = None,
    ) -> ApplyResult:
        """Upsert one entity's full record (or its tombstone when `new_row` is None) under the host lock."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
            raise InvalidRequest(f"version must be a whole number ≥ 0, got {version!r}", field="version")
        cause = mark.event_id if mark else "api"
        try:
            with self.db.transaction() as tx:
                conn = tx.conn
                assert conn is not None
                host = tx.lock(host_id, create=True)
                if journal.seen(tx, mark):
                    return ApplyResult("duplicate", entity_id, version or 0)
                sql = self._tables[table.name]
                where = {"b_host": host_id, "b_key": entity_id}
                old = conn.execute(sql.select, where).mappings().one_or_none()
                if version is None:
                    version = (old["version"] + 1) if old is not None else 1
                if old is not None and version <= old["version"]:
                    journal.mark(tx, mark, host_id, entity_id, version, "stale")
                    return ApplyResult("stale", entity_id, version)
                # A deleted entity keeps only its id and version (a tombstone), so late events stay out.
                values = sql.tombstone() if new_row is None else {**new_row(tx, host), "deleted": False}
                record = sql.full_record(values, host_id, entity_id, version, self.db.clock())
                if old is None:
                    conn.execute(sql.insert, record)
                else:
                    conn.execute(sql.update, {**sql.update_params(record), **where})
                delta = difference(usage(record), usage(old))
                tx.move(host, delta)
                tx.log(host, kind, entity_id, action, cause, delta)
                if after is not None:
                    after(tx, host)
                journal.mark(tx, mark, host_id, entity_id, version, "applied")
                return ApplyResult("applied", entity_id, version)
        except self._duplicates:
            # Another writer recorded the same event id first (a concurrent redelivery): it is applied once.
            # Inside a batch the whole transaction is void, so the batch must be retried.
            if mark is not None and not self.db.in_batch and self._recorded(mark):
                return ApplyResult("duplicate", entity_id, version or 0)
            raise

    def _recorded(self, mark: EventMark) -> bool:
        with self.db.transaction() as tx:
            return journal.seen(tx, mark)


_BANDWIDTH_COLUMNS = ("network_download_bps", "network_upload_bps", "network_bps", "disk_io_bps")
_VOLUMES = sized_usage("volumes_bytes")
_IMAGES = sized_usage("images_bytes")
_OCI = sized_usage("oci_cache_bytes", "total_bytes")


def _fixed(values: dict[str, Any]) -> NewRow:
    return lambda _tx, _host: values


class _EntityStatements:
    """One entity table's statements, built once: the select, insert and update of a full record."""

    def __init__(self, table: Table, key: str) -> None:
        self.table = table
        self.key = key
        self.columns = [c.name for c in table.c]
        self.select = select(table).where(
            table.c.host_id == bindparam("b_host"), table.c[key] == bindparam("b_key")
        )
        self.insert = insert(table)
        self.settable = [c for c in self.columns if c not in {"host_id", key}]
        self.update = (
            update(table)
            .where(table.c.host_id == bindparam("b_host"), table.c[key] == bindparam("b_key"))
            .values({c: bindparam(f"v_{c}") for c in self.settable})
        )

    def full_record(
        self, values: Mapping[str, Any], host_id: str, entity_id: str, version: int, now: datetime
    ) -> dict[str, Any]:
        record = {"host_id": host_id, self.key: entity_id, "version": version, "updated_at": now}
        record.update({k: v for k, v in values.items() if k in self.columns and k not in record})
        return record

    def update_params(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {f"v_{c}": record[c] for c in self.settable}

    def tombstone(self) -> dict[str, Any]:
        """Every column zeroed or emptied, whatever the entity held before (order must not matter)."""
        values: dict[str, Any] = {}
        for column in self.table.c:
            if column.name in {"host_id", self.key, "version", "updated_at"}:
                continue
            python_type = column.type.python_type
            if python_type is int:
                values[column.name] = 0
            elif python_type is bool:
                values[column.name] = column.name == "deleted"
            elif column.name == "state":
                values[column.name] = DELETED_STATE
            elif column.nullable:
                values[column.name] = None
            else:  # a name, the defaulted bandwidths: empty
                values[column.name] = ""
        return values
