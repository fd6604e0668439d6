"""The ledger: every read and write of a host's capacity and usage, each write one transaction under the
host's lock.

Admission (`reserve`) locks the host row (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `SELECT … FOR UPDATE`),
sweeps expired holds, compares each requested amount with what is left of its effective limit, and either
records a hold or refuses. Every other write that changes what a host owes takes the same lock and moves the
host's running totals in the same transaction, so a reservation turning into an instance is counted once.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Table, bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import PoolProxiedConnection

from ledger.core import capacity as rules
from ledger.core.capacity import AllocationRequest, GpuSlots, ResourceStatus
from ledger.core.errors import Conflict, InvalidRequest, LedgerError, NotFound, Unavailable, UnknownHost
from ledger.core.gpu import GPUStatus
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import DELETED_STATE, Capacity, ResourceType, Source
from ledger.store import deadletters
from ledger.store.admission import GroupAdmission, Hold
from ledger.store.deadletters import DeadLetterRecord
from ledger.store.engine import is_sqlite, make_engine
from ledger.store.ids import reservation_id
from ledger.store.migrate import ensure_schema
from ledger.store.models import (
    AllocationLog,
    Host,
    HostCapacity,
    Image,
    Instance,
    OciCache,
    ProcessedEvent,
    Reservation,
    Volume,
    utcnow,
)
from ledger.store.results import (
    CONSUMED,
    EXPIRED,
    HELD,
    RELEASED,
    AllocationBreakdown,
    ApplyResult,
    DiskBreakdown,
    FullStatus,
    Grant,
    ReservationInfo,
)
from ledger.store.totals import ALLOC_COLUMNS, PEND_COLUMN, TOTAL_COLUMNS
from ledger.store.whole_group import WholeGroupAdmission

# per resource: (resource, its name, the host columns it is allocated in, the one its holds pend in)
_AVAILABLE_TERMS = tuple((r, r.value, ALLOC_COLUMNS[r], PEND_COLUMN[r]) for r in ResourceType)

hosts = cast(Table, Host.__table__)
capacities = cast(Table, HostCapacity.__table__)
instances = cast(Table, Instance.__table__)
volumes = cast(Table, Volume.__table__)
images = cast(Table, Image.__table__)
oci_cache = cast(Table, OciCache.__table__)
reservations = cast(Table, Reservation.__table__)
allocation_log = cast(Table, AllocationLog.__table__)
processed_events = cast(Table, ProcessedEvent.__table__)

MAX_TTL_SECONDS = 24 * 3600
UNREGISTERED_HINT = "host is not registered: run `ledger host refresh` on it, or publish host.capacity"

Totals = dict[str, int]  # hosts-table column → delta
RowLike = Mapping[Any, Any]  # a result row by column name


@dataclass(frozen=True, slots=True)
class EventMark:
    """The event a write comes from: recorded in the same transaction so a redelivery is a no-op."""

    event_id: str
    event_type: str
    stream_seq: int | None = None


def _instance_usage(row: RowLike | None) -> Totals:
    if row is None or not row["active"] or row["deleted"]:
        return {}
    return {
        "alloc_cpu": row["vcpus"],
        "alloc_memory": row["memory_bytes"],
        "alloc_network": max(row["network_download_bps"], row["network_upload_bps"]),
        "alloc_disk_io": row["disk_io_bps"],
        "alloc_gpu": 1 if row["gpu"] else 0,
        "overlays_bytes": row["overlay_bytes"] + row["volume_overlay_bytes"],
    }


def _hold_usage(row: RowLike) -> Totals:
    return {
        "pend_cpu": row["vcpus"],
        "pend_memory": row["memory_bytes"],
        "pend_disk": row["disk_bytes"],
        "pend_network": max(row["network_download_bps"], row["network_upload_bps"]),
        "pend_disk_io": row["disk_io_bps"],
        "pend_gpu": row["gpu"],
    }


def _difference(new: Totals, old: Totals) -> Totals:
    keys = set(new) | set(old)
    return {k: new.get(k, 0) - old.get(k, 0) for k in keys if new.get(k, 0) != old.get(k, 0)}


def _negate(totals: Totals) -> Totals:
    return {k: -v for k, v in totals.items() if v}


class _Checkpointer:
    """Checkpoints a SQLite WAL from its own thread every `interval` seconds (PASSIVE: never blocks writers),
    for a connection that commits on an event loop with automatic checkpoints off."""

    def __init__(self, engine: Engine, interval: float = 0.25) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            with contextlib.suppress(Exception):  # a busy or closed database: try again next time
                connection = self._engine.raw_connection()
                try:
                    connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
                finally:
                    connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


class Ledger:
    """The allocation ledger over one database; safe to use from many threads and processes at once."""

    def __init__(
        self,
        engine: Engine,
        *,
        reservation_ttl: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.reservation_ttl = reservation_ttl
        self.clock = clock
        self._sqlite = is_sqlite(engine)
        self._lock_host = (
            select(hosts).where(hosts.c.host_id == bindparam("host_id")).with_for_update()
        )  # FOR UPDATE is dropped on SQLite, where BEGIN IMMEDIATE already holds the database's write lock
        # The hot path reuses statements built once: building and keying a new statement per call would cost
        # more than executing it.
        self._move_totals = (
            update(hosts)
            .where(hosts.c.host_id == bindparam("b_host_id"))
            .values({hosts.c[c]: hosts.c[c] + bindparam(f"d_{c}") for c in TOTAL_COLUMNS})
        )
        self._move_totals_and_expiry = self._move_totals.values(next_expiry=bindparam("b_next"))
        self._sweep_expired = (
            update(reservations)
            .where(
                reservations.c.host_id == bindparam("b_host_id"),
                reservations.c.status == HELD,
                reservations.c.expires_at <= bindparam("b_now"),
            )
            .values(status=EXPIRED, ended_at=bindparam("b_now"))
            .returning(*reservations.c)
        )
        self._earliest_hold = select(func.min(reservations.c.expires_at)).where(
            reservations.c.host_id == bindparam("b_host_id"), reservations.c.status == HELD
        )
        self._set_next_expiry = (
            update(hosts)
            .where(hosts.c.host_id == bindparam("b_host_id"))
            .values(next_expiry=bindparam("b_next"))
        )
        self._select_capacities = select(capacities).where(capacities.c.host_id == bindparam("host_id"))
        self._capacity_cache: dict[str, tuple[int, dict[str, Row[Any]]]] = {}
        self._select_event = select(processed_events.c.event_id).where(
            processed_events.c.event_id == bindparam("event_id")
        )
        self._insert_event = insert(processed_events)
        self._entity_statements = {
            table.name: _EntityStatements(table, key)
            for table, key in (
                (instances, "instance_id"),
                (volumes, "volume_id"),
                (images, "image_id"),
                (oci_cache, "host_id"),
            )
        }
        self._batch = threading.local()
        # SQLite has one writer at a time: threads of this process queue on a lock instead of spinning in
        # SQLite's busy handler (which sleeps in steps of up to 100 ms); other processes still wait there.
        self._write_lock = threading.Lock()
        self._writer: contextlib.AbstractContextManager[Any] = (
            self._write_lock if self._sqlite else contextlib.nullcontext()
        )
        self._insert_reservation = insert(reservations)
        self._insert_log = insert(allocation_log)
        self._admission = GroupAdmission(self, hosts, reservations, allocation_log)
        # tried first: a group that fits whole, granted by one conditional update (see whole_group.py)
        self._whole_group = WholeGroupAdmission(self, hosts, reservations, allocation_log)
        self._nowait: PoolProxiedConnection | None = None  # try_reserve_many's own, made on first use
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, **options: Any) -> Ledger:
        """A ledger on the database at `url`, migrated to the current schema unless told not to."""
        engine = make_engine(url)
        try:
            if migrate:
                ensure_schema(engine)
        except OperationalError as exc:
            engine.dispose()
            raise Unavailable(f"cannot reach the database at {engine.url!r}: {exc.orig}") from None
        return cls(engine, **options)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._nowait is not None:
            self._nowait.close()
            self._nowait = None
        self._whole_group.close()
        self.engine.dispose()

    # ---- transactions -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        batch = getattr(self._batch, "conn", None)
        if batch is not None:  # inside `batch()`: every write joins its one transaction
            yield batch
            return
        try:
            with self._writer, self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise Unavailable(f"database unavailable: {str(exc.orig).strip()}") from exc

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run every write in the block in one transaction (committed at the end, rolled back on error).

        The event consumer applies a fetched batch this way: one commit for many events, acked after it.
        """
        try:
            with self._writer, self.engine.begin() as conn, self._joined(conn):
                yield
        except OperationalError as exc:
            raise Unavailable(f"database unavailable: {str(exc.orig).strip()}") from exc

    @contextmanager
    def _joined(self, conn: Connection) -> Iterator[None]:
        """Make `conn` the transaction every write on this thread joins, for the block."""
        if getattr(self._batch, "conn", None) is not None:
            raise RuntimeError("batches do not nest")
        self._batch.conn, self._batch.locked = conn, {}
        try:
            yield
        finally:
            self._batch.conn, self._batch.locked = None, None

    @property
    def in_batch(self) -> bool:
        return getattr(self._batch, "conn", None) is not None

    @contextmanager
    def _locked(
        self, host_id: str, *, create: bool = False, reuse: bool = False
    ) -> Iterator[tuple[Connection, Row[Any]]]:
        """A transaction holding `host_id`'s lock, expired holds already swept; `create` makes an empty host
        row for records that arrive before the host registered (they must still be counted).

        Inside a batch the lock is held until commit, so writes that never read the row's totals (`reuse`,
        the record upserts) skip re-reading it; everything else reads it fresh.
        """
        with self._transaction() as conn:
            locked: dict[str, Row[Any]] | None = getattr(self._batch, "locked", None)
            if locked is not None and reuse and host_id in locked:
                yield conn, locked[host_id]
                return
            row = conn.execute(self._lock_host, {"host_id": host_id}).one_or_none()
            if row is None and create:
                self._insert_host(conn, host_id)
                row = conn.execute(self._lock_host, {"host_id": host_id}).one()
            if row is None:
                raise UnknownHost(f"unknown host {host_id!r}: {UNREGISTERED_HINT}", host=host_id)
            if self._sweep(conn, row):
                row = conn.execute(self._lock_host, {"host_id": host_id}).one()
            if locked is not None:
                locked[host_id] = row
            yield conn, row

    def _insert_host(self, conn: Connection, host_id: str) -> None:
        now = self.clock()
        stmt: Any
        if self._sqlite:
            stmt = insert(hosts).prefix_with("OR IGNORE")
        else:
            stmt = postgresql.insert(hosts).on_conflict_do_nothing(index_elements=["host_id"])
        conn.execute(stmt.values(host_id=host_id, created_at=now, updated_at=now))

    def _move(
        self, conn: Connection, host_id: str, delta: Totals, *, next_expiry: datetime | None = None
    ) -> None:
        """Shift the host's running totals by `delta` (and lower its next expiry when a hold is added)."""
        if not delta and next_expiry is None:
            return
        params: dict[str, Any] = {f"d_{c}": delta.get(c, 0) for c in TOTAL_COLUMNS}
        params["b_host_id"] = host_id
        if next_expiry is None:
            conn.execute(self._move_totals, params)
        else:
            conn.execute(self._move_totals_and_expiry, {**params, "b_next": next_expiry})

    def _log(
        self,
        conn: Connection,
        host_id: str,
        kind: str,
        entity_id: str,
        action: str,
        cause: str,
        delta: Totals,
    ) -> None:
        if delta:
            conn.execute(self._insert_log, self._log_row(host_id, kind, entity_id, action, cause, delta))

    def _log_row(
        self, host_id: str, kind: str, entity_id: str, action: str, cause: str, delta: Totals
    ) -> dict[str, Any]:
        """The allocation_log row for a change of `delta` to a host's totals."""
        bucket = "pending" if any(k.startswith("pend_") for k in delta) else "allocated"
        disk = sum(
            delta.get(k, 0) for k in ("images_bytes", "oci_cache_bytes", "volumes_bytes", "overlays_bytes")
        )
        return {
            "host_id": host_id,
            "at": self.clock(),
            "entity_kind": kind,
            "entity_id": entity_id,
            "action": action,
            "bucket": bucket,
            "cause": cause[:255],
            "cpu": delta.get("alloc_cpu", 0) + delta.get("pend_cpu", 0),
            "memory_bytes": delta.get("alloc_memory", 0) + delta.get("pend_memory", 0),
            "disk_bytes": disk + delta.get("pend_disk", 0),
            "network_bps": delta.get("alloc_network", 0) + delta.get("pend_network", 0),
            "disk_io_bps": delta.get("alloc_disk_io", 0) + delta.get("pend_disk_io", 0),
            "gpu": delta.get("alloc_gpu", 0) + delta.get("pend_gpu", 0),
        }

    # ---- hosts --------------------------------------------------------------------------------

    def register_host(
        self,
        host_id: str,
        found: Mapping[ResourceType, Capacity],
        ratios: Mapping[ResourceType, float],
        gpu: GPUStatus | None = None,
        *,
        version: int | None = None,
        mark: EventMark | None = None,
    ) -> ApplyResult:
        """Create or refresh a host's capacities, ratios and GPU inventory (usage is left alone).

        A `host.capacity` event passes its `version` and `mark`: a redelivery is a duplicate and an older
        snapshot delivered late is stale, as for every other entity.
        """
        if not host_id or len(host_id) > 255:
            raise InvalidRequest("host id must be 1 to 255 characters", field="host")
        for resource in ResourceType:
            ratio = ratios.get(resource)
            if ratio is not None and not _valid_ratio(ratio):
                raise InvalidRequest(
                    f"oversubscription ratio for {resource.value} must be greater than 0, got {ratio}",
                    field="oversub_ratio",
                )
        with self._locked(host_id, create=True) as (conn, host):
            if self._seen(conn, mark):
                return ApplyResult("duplicate", host_id, version or 0)
            if version is not None and host.reported_version is not None and version <= host.reported_version:
                self._mark(conn, mark, host_id, host_id, version, "stale")
                return ApplyResult("stale", host_id, version)
            now = self.clock()
            conn.execute(
                update(hosts)
                .where(hosts.c.host_id == host_id)
                .values(
                    reported_version=version if version is not None else host.reported_version,
                    gpu_status=json.dumps(gpu.to_dict()) if gpu else None,
                    gpu_total=gpu.total_slots if gpu else 0,
                    gpu_busy=gpu.used_slots if gpu else 0,
                    capacity_version=hosts.c.capacity_version + 1,
                    updated_at=now,
                )
            )
            conn.execute(capacities.delete().where(capacities.c.host_id == host_id))
            rows = []
            for resource in ResourceType:
                cap = found[resource]
                ratio = rules.oversub_ratio(resource, ratios.get(resource))
                rows.append(
                    {
                        "host_id": host_id,
                        "resource": resource.value,
                        "capacity": cap.capacity,
                        "source": cap.source.value,
                        "hint": cap.hint,
                        "oversub_ratio": ratio,
                        "effective_limit": rules.effective_limit(cap.capacity, ratio),
                        "updated_at": now,
                    }
                )
            conn.execute(insert(capacities), rows)
            self._mark(conn, mark, host_id, host_id, version or 0, "applied")
            return ApplyResult("applied", host_id, version or 0)

    def set_ratio(self, host_id: str, resource: ResourceType, ratio: float) -> None:
        """Change one oversubscription ratio; the effective limit follows."""
        if not _valid_ratio(ratio):
            raise InvalidRequest(f"oversubscription ratio must be greater than 0, got {ratio}", field="ratio")
        with self._locked(host_id) as (conn, _):
            cap = conn.execute(
                select(capacities.c.capacity).where(
                    capacities.c.host_id == host_id, capacities.c.resource == resource.value
                )
            ).scalar_one_or_none()
            if cap is None:
                raise UnknownHost(f"host {host_id!r} has no capacities: {UNREGISTERED_HINT}", host=host_id)
            conn.execute(
                update(capacities)
                .where(capacities.c.host_id == host_id, capacities.c.resource == resource.value)
                .values(oversub_ratio=ratio, effective_limit=rules.effective_limit(cap, ratio))
            )
            conn.execute(
                update(hosts)
                .where(hosts.c.host_id == host_id)
                .values(capacity_version=hosts.c.capacity_version + 1, updated_at=self.clock())
            )

    def host_ids(self) -> list[str]:
        with self._transaction() as conn:
            return list(conn.execute(select(hosts.c.host_id).order_by(hosts.c.host_id)).scalars())

    def has_host(self, host_id: str) -> bool:
        with self._transaction() as conn:
            found = conn.execute(select(hosts.c.host_id).where(hosts.c.host_id == host_id)).first()
            return found is not None

    def is_registered(self, host_id: str) -> bool:
        """Whether the host has capacities (a host row made by an early event has none yet)."""
        with self._transaction() as conn:
            found = conn.execute(select(capacities.c.host_id).where(capacities.c.host_id == host_id)).first()
            return found is not None

    # ---- status -------------------------------------------------------------------------------

    def _statuses(self, conn: Connection | None, host: Any) -> dict[ResourceType, ResourceStatus]:
        """`host`: its row, or any object with the same attributes (group admission's running copy)."""
        rows = self._capacity_rows(conn, host)
        result = {}
        for resource in ResourceType:
            allocated = sum(getattr(host, c) for c in ALLOC_COLUMNS[resource])
            pending = getattr(host, PEND_COLUMN[resource])
            cap = rows.get(resource.value)
            if cap is None:
                result[resource] = ResourceStatus.compute(
                    resource, 0, None, Source.UNDETECTED, allocated, pending
                )
            else:
                result[resource] = ResourceStatus(
                    type=resource,
                    capacity=cap.capacity,
                    effective_limit=cap.effective_limit,
                    allocated=allocated,
                    pending=pending,
                    available=rules.available(cap.effective_limit, allocated, pending),
                    oversub_ratio=cap.oversub_ratio,
                    source=Source(cap.source),
                    hint=cap.hint if cap.source == Source.UNDETECTED.value else None,
                )
        return result

    def _capacity_rows(self, conn: Connection | None, host: Any) -> dict[str, Row[Any]]:
        """The host's capacity rows by resource name, from the cache while its capacity_version holds;
        `conn` may be None when `capacities_cached(host)`."""
        cached = self.cached_capacities(host.host_id)
        if cached is not None and cached[0] == host.capacity_version:
            return cached[1]
        if conn is None:
            raise RuntimeError("capacities are not cached and there is no connection to load them")
        rows = {r.resource: r for r in conn.execute(self._select_capacities, {"host_id": host.host_id})}
        self._capacity_cache[host.host_id] = (host.capacity_version, rows)
        return rows

    def _available(self, conn: Connection | None, host: Any) -> dict[ResourceType, int]:
        """What is left of each resource: `_statuses(...)[r].available` without building the statuses."""
        rows = self._capacity_rows(conn, host)
        left = {}
        for resource, name, alloc_columns, pend_column in _AVAILABLE_TERMS:  # on every validate: kept lean
            cap = rows.get(name)
            allocated = 0
            for column in alloc_columns:
                allocated += getattr(host, column)
            pending = getattr(host, pend_column)
            left[resource] = rules.available(cap.effective_limit if cap else 0, allocated, pending)
        return left

    def cached_capacities(self, host_id: str) -> tuple[int, dict[str, Row[Any]]] | None:
        """(capacity_version, capacity rows by resource) as last loaded for `host_id`, if ever."""
        return self._capacity_cache.get(host_id)

    def capacities_cached(self, host: Any) -> bool:
        """Whether the host's capacities, at the version its row names, are cached in this process."""
        cached = self.cached_capacities(host.host_id)
        return cached is not None and cached[0] == host.capacity_version

    @staticmethod
    def _gpu_slots(host: Any) -> GpuSlots | None:
        if not host.gpu_total:
            return None
        status = json.loads(host.gpu_status) if host.gpu_status else {}
        profiles = {p["name"]: int(p.get("available", 0)) for p in status.get("profiles", [])}
        used = max(host.alloc_gpu, host.gpu_busy) + host.pend_gpu
        return GpuSlots(
            mode=status.get("mode", "passthrough"), total=host.gpu_total, used=used, profiles=profiles
        )

    def status(self, host_id: str, resource: ResourceType) -> ResourceStatus:
        """One resource's status on a host (expired holds swept first)."""
        with self._locked(host_id) as (conn, host):
            return self._statuses(conn, host)[resource]

    def full_status(self, host_id: str, *, with_allocations: bool = True) -> FullStatus:
        """The seed's FullResourceStatus for a host, plus `pending`."""
        with self._locked(host_id) as (conn, host):
            statuses = self._statuses(conn, host)
            allocations = []
            if with_allocations:
                query = (
                    select(instances)
                    .where(instances.c.host_id == host_id, instances.c.active, ~instances.c.deleted)
                    .order_by(instances.c.instance_id)
                )
                allocations = [
                    AllocationBreakdown(
                        instance_id=r.instance_id,
                        instance_name=r.name,
                        state=r.state,
                        cpu=r.vcpus,
                        memory_bytes=r.memory_bytes,
                        disk_bytes=r.overlay_bytes + r.volume_overlay_bytes + r.volume_bytes,
                        network_download_bps=r.network_download_bps,
                        network_upload_bps=r.network_upload_bps,
                        disk_io_bps=r.disk_io_bps,
                        gpu=r.gpu,
                    )
                    for r in conn.execute(query)
                ]
            gpu: dict[str, Any] | None = None
            if host.gpu_status:
                gpu = json.loads(host.gpu_status)
                gpu["used_slots"] = max(host.alloc_gpu, host.gpu_busy)
                gpu["pending_slots"] = host.pend_gpu
            return FullStatus(
                host_id=host_id,
                resources=statuses,
                disk_breakdown=DiskBreakdown(
                    images_bytes=host.images_bytes,
                    oci_cache_bytes=host.oci_cache_bytes,
                    volumes_bytes=host.volumes_bytes,
                    overlays_bytes=host.overlays_bytes,
                ),
                gpu=gpu,
                allocations=allocations,
            )

    def can_allocate(self, host_id: str, resource: ResourceType, amount: int) -> bool:
        """Whether `amount` of `resource` fits right now (a hint; only `reserve` guarantees it)."""
        rules.check_amount("amount", amount)
        return amount <= self.status(host_id, resource).available

    # ---- reservations -------------------------------------------------------------------------

    def _sweep(self, conn: Connection, host: Row[Any]) -> int:
        """Mark expired holds `expired` and take them off the pending totals; returns how many.

        `hosts.next_expiry` is a lower bound on the earliest held expiry, so most calls return at once.
        """
        now = self.clock()
        if host.next_expiry is None or now < host.next_expiry:
            return 0
        params = {"b_host_id": host.host_id, "b_now": now}
        expired = conn.execute(self._sweep_expired, params).mappings().all()
        for row in expired:
            delta = _negate(_hold_usage(row))
            self._move(conn, host.host_id, delta)
            self._log(conn, host.host_id, "reservation", row["reservation_id"], EXPIRED, "ttl", delta)
        earliest = conn.execute(self._earliest_hold, {"b_host_id": host.host_id}).scalar()
        conn.execute(self._set_next_expiry, {"b_host_id": host.host_id, "b_next": earliest})
        return len(expired)

    def reserve(
        self,
        host_id: str,
        request: AllocationRequest,
        *,
        idempotency_key: str | None = None,
        ttl: float | None = None,
    ) -> Grant:
        """Validate = reserve: check every requested resource against what is left and hold it, atomically.

        Raises InsufficientResources naming the first resource (cpu, memory, network, disk I/O, disk, GPU)
        that does not fit. The same idempotency key returns the same grant and holds nothing more.
        """
        ttl = self._hold_ttl(ttl, idempotency_key)
        with self._locked(host_id) as (conn, host):
            if idempotency_key is not None:
                earlier = (
                    conn.execute(
                        select(reservations).where(
                            reservations.c.host_id == host_id,
                            reservations.c.idempotency_key == idempotency_key,
                        )
                    )
                    .mappings()
                    .one_or_none()
                )
                if earlier is not None:
                    return self._replay(earlier, request)
            refusal = self._refusal(conn, host, request)
            if refusal is not None:
                raise refusal
            row = self._hold_row(host_id, request, idempotency_key, ttl)
            conn.execute(self._insert_reservation, row)
            delta = {k: v for k, v in _hold_usage(row).items() if v}
            expires_at = row["expires_at"]
            next_expiry = expires_at if host.next_expiry is None else min(host.next_expiry, expires_at)
            self._move(conn, host_id, delta, next_expiry=next_expiry)
            self._log(conn, host_id, "reservation", row["reservation_id"], "reserved", "api", delta)
            return Grant(row["reservation_id"], host_id, HELD, expires_at, idempotency_key)

    def _hold_ttl(self, ttl: float | None, idempotency_key: str | None) -> float:
        """The hold's TTL in seconds (the default when not given); InvalidRequest for a bad TTL or key."""
        ttl = self.reservation_ttl if ttl is None else ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidRequest(
                f"ttl_seconds must be greater than 0 and at most {MAX_TTL_SECONDS}, got {ttl!r}",
                field="ttl_seconds",
            )
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255
        ):
            raise InvalidRequest("idempotency_key must be 1 to 255 characters", field="idempotency_key")
        return float(ttl)

    def _refusal(self, conn: Connection | None, host: Any, request: AllocationRequest) -> LedgerError | None:
        """Why `request` does not fit on `host` as its totals stand (None when it fits); InvalidRequest for a
        GPU profile the host does not offer."""
        refusal = rules.first_shortfall(request, self._statuses(conn, host))
        if refusal is None:
            slots = self._gpu_slots(host)
            refusal = rules.gpu_shortfall(request, slots)
            profiles = slots.profiles if slots else {}
            if refusal is None and request.gpu_profile and profiles and request.gpu_profile not in profiles:
                raise InvalidRequest(
                    f"unknown GPU profile {request.gpu_profile!r}; this host offers: "
                    f"{', '.join(sorted(profiles))}",
                    field="gpu_profile",
                )
        if refusal is not None:
            refusal.details["host"] = host.host_id
            self._explain_undetected(host.host_id, refusal)
        return refusal

    def _hold_row(
        self, host_id: str, request: AllocationRequest, idempotency_key: str | None, ttl: float
    ) -> dict[str, Any]:
        """A new held reservation's row."""
        now = self.clock()
        return {
            "reservation_id": reservation_id(),
            "host_id": host_id,
            "idempotency_key": idempotency_key,
            "status": HELD,
            "vcpus": request.vcpus,
            "memory_bytes": request.memory_bytes,
            "disk_bytes": request.disk_bytes,
            "network_download_bps": request.network_download_bps,
            "network_upload_bps": request.network_upload_bps,
            "disk_io_bps": request.disk_io_bps,
            "gpu": 1 if request.wants_gpu else 0,
            "gpu_profile": request.gpu_profile,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl),
            "ended_at": None,
            "instance_id": None,
        }

    def _explain_undetected(self, host_id: str, refusal: LedgerError) -> None:
        """A refusal on a capacity discovery could not read says which setting would fix it."""
        cached = self._capacity_cache.get(host_id)
        row = cached[1].get(str(refusal.details.get("resource"))) if cached else None
        if row is not None and row.source == Source.UNDETECTED.value:
            hint = row.hint or "configure this host's capacity for it"
            refusal.message = f"{refusal.message}; this host's capacity was not detected: {hint}"
            refusal.details["hint"] = hint
            refusal.args = (refusal.message,)

    def reserve_many(self, holds: Sequence[Hold], *, whole_group: bool = True) -> list[Grant | LedgerError]:
        """Admit many requests in arrival order in ONE transaction (group commit): each is checked against
        the totals its predecessors left, exactly as if reserved one by one. A refusal writes nothing, so it
        is returned in its place without spoiling the others. A group that fits whole is granted by the
        whole-group update first (on PostgreSQL one autocommit statement, which writes nothing when it does
        not fit); `whole_group=False` skips that check when the caller has just made it."""
        whole_group = whole_group and bool(holds)
        if whole_group and not self._sqlite and not self.in_batch:
            granted = self._whole_group.try_admit(holds)  # one round trip, in autocommit
            if granted is not None:
                return list(granted)
        with self.batch():
            conn = self._batch.conn
            if whole_group and self._sqlite:
                outcomes = self._whole_group_in(conn.connection.dbapi_connection, holds)
                if outcomes is not None:
                    return outcomes
            return self._admission.admit(conn, holds)

    def try_reserve_many(self, holds: Sequence[Hold]) -> list[Grant | LedgerError] | None:
        """`reserve_many`, or None at once when it cannot be done right now without waiting.

        SQLite only (None on PostgreSQL, whose statements wait on the network): with the write lock free,
        admission is a few local statements (the whole-group update, else group admission), cheap enough
        for an event loop to run in place instead of paying two thread hops per group. It runs on a
        connection of its own with SQLite's busy timeout at 0 (a lock another process holds is a quick None
        too) and in a transaction opened on the bare DBAPI connection; a group that needs `Ledger.reserve`
        (GPU, holds due to expire, unknown host, capacities not cached) is None as well.
        """
        if not self._sqlite:
            return None
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            dbapi = self._nowait_connection()
            try:
                dbapi.execute("BEGIN IMMEDIATE")  # fails at once when another writer has the lock
            except sqlite3.OperationalError:
                return None
            try:
                outcomes = self._whole_group_in(dbapi, holds) if holds else None
                if outcomes is None:
                    outcomes = self._admission.admit_plain(dbapi, holds)
                if outcomes is None:
                    dbapi.rollback()
                else:
                    dbapi.commit()
                return outcomes
            except BaseException as exc:
                dbapi.rollback()
                if isinstance(exc, sqlite3.OperationalError):
                    raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc
                raise
        finally:
            self._write_lock.release()

    async def try_reserve_many_async(
        self, holds: Sequence[Hold]
    ) -> tuple[list[Grant | LedgerError] | None, bool]:
        """PostgreSQL, for an event loop: a lone request that fits, granted by the whole-group statement on
        an async connection (one round trip, no thread hops, the loop never blocked); None otherwise, and
        always on SQLite (`try_reserve_many` is its loop path). Also says whether the whole-group check
        was made here: then `reserve_many(..., whole_group=False)` does not repeat it (a refusal on a full
        host would otherwise pay its round trip twice)."""
        if self._sqlite or len(holds) != 1:
            return None, False
        granted = await self._whole_group.try_admit_async(holds)
        return (None if granted is None else list(granted)), True

    async def aclose(self) -> None:
        """Close what lives on the caller's event loop (the async connection above); `close` does the rest."""
        await self._whole_group.aclose()

    def _whole_group_in(
        self, dbapi_connection: Any, holds: Sequence[Hold]
    ) -> list[Grant | LedgerError] | None:
        """SQLite: the whole-group grant inside the open write transaction, or None (nothing written)."""
        cursor = dbapi_connection.cursor()
        try:
            granted = self._whole_group.try_admit_in(cursor, holds)
        finally:
            cursor.close()
        return None if granted is None else list(granted)

    def _nowait_connection(self) -> sqlite3.Connection:
        if self._nowait is None:
            pooled = self.engine.raw_connection()
            pooled.detach()  # its pragmas are its own: it never goes back to the pool
            dbapi = pooled.dbapi_connection
            assert isinstance(dbapi, sqlite3.Connection)
            dbapi.execute("PRAGMA busy_timeout = 0")
            # Its commits run on an event loop: leave WAL checkpoints (milliseconds of I/O) to a thread.
            dbapi.execute("PRAGMA wal_autocheckpoint = 0")
            self._nowait = pooled
            self._checkpointer = _Checkpointer(self.engine)
        driver = self._nowait.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        return driver

    @staticmethod
    def _replay(earlier: RowLike, request: AllocationRequest) -> Grant:
        same = (
            earlier["vcpus"] == request.vcpus
            and earlier["memory_bytes"] == request.memory_bytes
            and earlier["disk_bytes"] == request.disk_bytes
            and earlier["network_download_bps"] == request.network_download_bps
            and earlier["network_upload_bps"] == request.network_upload_bps
            and earlier["disk_io_bps"] == request.disk_io_bps
            and earlier["gpu"] == (1 if request.wants_gpu else 0)
            and earlier["gpu_profile"] == request.gpu_profile
        )
        if not same:
            raise Conflict(
                f"idempotency key {earlier['idempotency_key']!r} was already used for a different request "
                f"(reservation {earlier['reservation_id']})",
                reservation_id=earlier["reservation_id"],
            )
        return Grant(
            earlier["reservation_id"],
            earlier["host_id"],
            earlier["status"],
            earlier["expires_at"],
            earlier["idempotency_key"],
            replayed=True,
        )

    def _find_reservation(self, conn: Connection, reservation_id: str) -> RowLike:
        row = (
            conn.execute(select(reservations).where(reservations.c.reservation_id == reservation_id))
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise NotFound(f"no reservation {reservation_id!r}", reservation_id=reservation_id)
        return row

    def reservation(self, reservation_id: str) -> ReservationInfo:
        with self._transaction() as conn:
            return _info(self._find_reservation(conn, reservation_id))

    def release(self, reservation_id: str) -> ReservationInfo:
        """Give a held reservation back; releasing one that already ended says how it ended."""
        if not isinstance(reservation_id, str) or not reservation_id:
            raise InvalidRequest("reservation_id must be a non-empty string", field="reservation_id")
        with self._transaction() as conn:
            host_id = self._find_reservation(conn, reservation_id)["host_id"]
        with self._locked(host_id) as (conn, _):
            row = self._find_reservation(conn, reservation_id)
            if row["status"] != HELD:
                return _info(row)
            now = self.clock()
            conn.execute(
                update(reservations)
                .where(reservations.c.reservation_id == reservation_id)
                .values(status=RELEASED, ended_at=now)
            )
            delta = _negate(_hold_usage(row))
            self._move(conn, host_id, delta)
            self._log(conn, host_id, "reservation", reservation_id, RELEASED, "api", delta)
            return _info(self._find_reservation(conn, reservation_id))

    def expire(self, host_id: str) -> int:
        """Sweep expired holds now (every locked transaction does it anyway); returns how many expired."""
        with self._transaction() as conn:
            host = conn.execute(self._lock_host, {"host_id": host_id}).one_or_none()
            if host is None:
                raise UnknownHost(f"unknown host {host_id!r}: {UNREGISTERED_HINT}", host=host_id)
            return self._sweep(conn, host)

    def _consume(
        self, conn: Connection, host_id: str, reservation_id: str, instance_id: str, cause: str
    ) -> None:
        row = (
            conn.execute(select(reservations).where(reservations.c.reservation_id == reservation_id))
            .mappings()
            .one_or_none()
        )
        if row is None or row["host_id"] != host_id or row["status"] != HELD:
            return  # unknown, elsewhere, or already ended: the instance is counted either way, once
        conn.execute(
            update(reservations)
            .where(reservations.c.reservation_id == reservation_id)
            .values(status=CONSUMED, ended_at=self.clock(), instance_id=instance_id)
        )
        delta = _negate(_hold_usage(row))
        self._move(conn, host_id, delta)
        self._log(conn, host_id, "reservation", reservation_id, CONSUMED, cause, delta)

    # ---- records (what the lifecycle events apply) --------------------------------------------

    def _seen(self, conn: Connection, mark: EventMark | None) -> bool:
        if mark is None:
            return False
        return conn.execute(self._select_event, {"event_id": mark.event_id}).first() is not None

    def _mark(
        self,
        conn: Connection,
        mark: EventMark | None,
        host_id: str,
        entity_id: str,
        version: int,
        outcome: str,
    ) -> None:
        if mark is None:
            return
        conn.execute(
            self._insert_event,
            {
                "event_id": mark.event_id,
                "host_id": host_id,
                "stream_seq": mark.stream_seq,
                "event_type": mark.event_type,
                "entity_id": entity_id,
                "version": version,
                "outcome": outcome,
                "processed_at": self.clock(),
            },
        )

    def _apply(
        self,
        host_id: str,
        table: Any,
        key_column: str,
        entity_id: str,
        version: int | None,
        new_row: dict[str, Any] | None,
        usage: Callable[[RowLike | None], Totals],
        kind: str,
        action: str,
        mark: EventMark | None,
        after: Callable[[Connection], None] | None = None,
    ) -> ApplyResult:
        """Upsert one entity's full record (or its tombstone when `new_row` is None) under the host lock."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
            raise InvalidRequest(f"version must be a whole number ≥ 0, got {version!r}", field="version")
        cause = mark.event_id if mark else "api"
        try:
            with self._locked(host_id, create=True, reuse=True) as (conn, _):
                if self._seen(conn, mark):
                    return ApplyResult("duplicate", entity_id, version or 0)
                sql = self._entity_statements[table.name]
                where = {"b_host": host_id, "b_key": entity_id}
                old = conn.execute(sql.select, where).mappings().one_or_none()
                if version is None:
                    version = (old["version"] + 1) if old is not None else 1
                if old is not None and version <= old["version"]:
                    self._mark(conn, mark, host_id, entity_id, version, "stale")
                    return ApplyResult("stale", entity_id, version)
                now = self.clock()
                # A deleted entity keeps only its id and version (a tombstone), so late events stay out.
                values = sql.tombstone() if new_row is None else {**new_row, "deleted": False}
                record = sql.full_record(values, host_id, entity_id, version, now)
                if old is None:
                    conn.execute(sql.insert, record)
                else:
                    conn.execute(sql.update, {**sql.update_params(record), **where})
                delta = _difference(usage(record), usage(old))
                self._move(conn, host_id, delta)
                self._log(conn, host_id, kind, entity_id, action, cause, delta)
                if after is not None:
                    after(conn)
                self._mark(conn, mark, host_id, entity_id, version, "applied")
                return ApplyResult("applied", entity_id, version)
        except IntegrityError:
            # Another writer recorded the same event id first (a concurrent redelivery): it is applied once.
            # Inside a batch the whole transaction is void, so the batch must be retried.
            if mark is not None and not self.in_batch:
                return ApplyResult("duplicate", entity_id, version or 0)
            raise

    def apply_instance(
        self,
        host_id: str,
        record: InstanceRecord,
        *,
        version: int | None = None,
        action: str = "updated",
        mark: EventMark | None = None,
    ) -> ApplyResult:
        """Record an instance's full current state; a `reservation_id` in it is consumed in the same
        transaction, so the hold becomes the allocation without being counted twice or not at all."""
        row = {
            "name": record.name or "",
            "state": record.state,
            "active": record.active,
            "vcpus": record.vcpus,
            "memory_bytes": record.memory_bytes,
            "overlay_bytes": record.overlay_bytes,
            "volume_overlay_bytes": record.volume_overlay_bytes,
            "volume_bytes": record.volume_bytes,
            "network_download_bps": record.network_download_bps,
            "network_upload_bps": record.network_upload_bps,
            "disk_io_bps": record.disk_io_bps,
            "gpu": record.gpu,
            "reservation_id": record.reservation_id,
        }
        cause = mark.event_id if mark else "api"
        consume = None
        if record.reservation_id:
            reservation_id = record.reservation_id

            def consume(conn: Connection) -> None:
                self._consume(conn, host_id, reservation_id, record.id, cause)

        return self._apply(
            host_id,
            instances,
            "instance_id",
            record.id,
            version,
            row,
            _instance_usage,
            "instance",
            action,
            mark,
            consume,
        )

    def delete_instance(
        self, host_id: str, instance_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self._apply(
            host_id,
            instances,
            "instance_id",
            instance_id,
            version,
            None,
            _instance_usage,
            "instance",
            "deleted",
            mark,
        )

    def apply_volume(
        self,
        host_id: str,
        record: VolumeRecord,
        *,
        version: int | None = None,
        action: str = "updated",
        mark: EventMark | None = None,
    ) -> ApplyResult:
        row = {"name": record.name or "", "size_bytes": record.size_bytes, "attached_to": record.attached_to}
        return self._apply(
            host_id,
            volumes,
            "volume_id",
            record.id,
            version,
            row,
            _sized("volumes_bytes"),
            "volume",
            action,
            mark,
        )

    def delete_volume(
        self, host_id: str, volume_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self._apply(
            host_id,
            volumes,
            "volume_id",
            volume_id,
            version,
            None,
            _sized("volumes_bytes"),
            "volume",
            "deleted",
            mark,
        )

    def apply_image(
        self, host_id: str, record: ImageRecord, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        row = {"name": record.name or "", "size_bytes": record.size_bytes}
        return self._apply(
            host_id,
            images,
            "image_id",
            record.id,
            version,
            row,
            _sized("images_bytes"),
            "image",
            "pulled",
            mark,
        )

    def delete_image(
        self, host_id: str, image_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self._apply(
            host_id,
            images,
            "image_id",
            image_id,
            version,
            None,
            _sized("images_bytes"),
            "image",
            "deleted",
            mark,
        )

    def apply_oci_cache(
        self,
        host_id: str,
        record: OciCacheRecord,
        *,
        version: int | None = None,
        mark: EventMark | None = None,
    ) -> ApplyResult:
        return self._apply(
            host_id,
            oci_cache,
            "host_id",
            host_id,
            version,
            {"total_bytes": record.total_bytes},
            _oci_usage,
            "oci_cache",
            "measured",
            mark,
        )

    # ---- checks the seed exposes ----------------------------------------------------------------

    def default_bandwidth(
        self, host_id: str, vcpus: int, *, uses_ratio: bool = False, burst_multiplier: float = 4.0
    ) -> dict[str, int]:
        """Default network (symmetric) and disk I/O (sustained, burst) for an instance of `vcpus`:
        its share of host vCPUs times each capacity (times the ratio only if `uses_ratio`)."""
        rules.check_amount("vcpus", vcpus)
        status = self.full_status(host_id, with_allocations=False).resources
        cpu = status[ResourceType.CPU].capacity

        def share(resource: ResourceType) -> int:
            s = status[resource]
            return rules.proportional_share(vcpus, cpu, s.capacity, s.oversub_ratio if uses_ratio else 1.0)

        network, disk_io = share(ResourceType.NETWORK), share(ResourceType.DISK_IO)
        return {
            "network_download_bps": network,
            "network_upload_bps": network,
            "disk_io_bps": disk_io,
            "disk_io_burst_bps": int(disk_io * burst_multiplier),
        }

    def image_pull_check(self, host_id: str, max_image_storage: float = 0.2) -> dict[str, int]:
        """Raise InsufficientResources unless an image pull fits: ≥ 5 GiB of disk left to promise and
        images plus OCI cache under `max_image_storage` of disk capacity."""
        status = self.full_status(host_id, with_allocations=False)
        disk = status.resources[ResourceType.DISK]
        rules.check_disk_for_pull(disk.available)
        current = status.disk_breakdown.images_bytes + status.disk_breakdown.oci_cache_bytes
        maximum = rules.max_image_storage_bytes(disk.capacity, max_image_storage)
        rules.check_image_storage(current, maximum)
        return {
            "disk_available": disk.available,
            "image_storage_bytes": current,
            "max_image_storage_bytes": maximum,
        }

    # ---- the event journal: dead letters and the consumer's position ----------------------------

    def dead_letter(
        self,
        *,
        payload: bytes,
        reason: str,
        subject: str = "",
        stream_seq: int | None = None,
        host_id: str | None = None,
    ) -> int:
        """Keep an event that cannot be applied, with the reason (joins the current batch, if any)."""
        with self._transaction() as conn:
            return deadletters.record(
                conn, payload=payload, reason=reason, subject=subject, stream_seq=stream_seq, host_id=host_id
            )

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetterRecord]:
        with self._transaction() as conn:
            return deadletters.listing(conn, include_replayed=include_replayed, limit=limit)

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord:
        with self._transaction() as conn:
            found = deadletters.get(conn, dead_letter_id)
        if found is None:
            raise NotFound(f"no dead letter {dead_letter_id}", dead_letter_id=dead_letter_id)
        return found

    def mark_replayed(self, dead_letter_id: int) -> None:
        with self._transaction() as conn:
            deadletters.mark_replayed(conn, dead_letter_id)

    def stream_position(self, consumer: str) -> int:
        """The low-water mark of what this database has handled for `consumer`: all sequences up to it."""
        with self._transaction() as conn:
            return deadletters.last_stream_seq(conn, consumer)

    def advance_position(self, consumer: str, handled: Iterable[int], floor: int = 0) -> int:
        """Record handled stream sequences (joins the current batch); returns the low-water mark."""
        with self._transaction() as conn:
            return deadletters.advance(conn, consumer, handled, floor)

    # ---- audit --------------------------------------------------------------------------------

    def drift(self) -> list[dict[str, Any]]:
        """Rows where a running total differs from the recomputed sum; must always be empty."""
        with self._transaction() as conn:
            rows = conn.execute(
                text("SELECT host_id, total, stored, recomputed, drift FROM ledger_drift WHERE drift <> 0")
            )
            return [dict(r._mapping) for r in rows]


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
            elif column.name == "name":
                values[column.name] = ""
            else:
                values[column.name] = None
        return values


def _valid_ratio(ratio: float) -> bool:
    return isinstance(ratio, int | float) and not isinstance(ratio, bool) and 0 < ratio < math.inf


def _sized(column: str) -> Callable[[RowLike | None], Totals]:
    def usage(row: RowLike | None) -> Totals:
        if row is None or row["deleted"]:
            return {}
        return {column: row["size_bytes"]}

    return usage


def _oci_usage(row: RowLike | None) -> Totals:
    if row is None or row.get("deleted"):
        return {}
    return {"oci_cache_bytes": row["total_bytes"]}


def _info(row: RowLike) -> ReservationInfo:
    return ReservationInfo(
        reservation_id=row["reservation_id"],
        host_id=row["host_id"],
        status=row["status"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        ended_at=row["ended_at"],
        instance_id=row["instance_id"],
    )
