"""Reservations after they are granted: looked up, released, consumed by the instance they were for, and
found again by their idempotency keys. (Granting is admission's; expiry is swept when a host is locked, and
by `sweep_due` for hosts nobody locks.)"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from ledger.core.admission import EarlierHold
from ledger.core.charges import Charge
from ledger.core.errors import InvalidRequest, NotFound
from ledger.core.results import CONSUMED, HELD, RELEASED, RESERVATION_STATUSES, ReservationInfo
from ledger.store.database import Database
from ledger.store.rows import HOLD_AMOUNTS
from ledger.store.sql import Cursor, hosts, reservations
from ledger.store.tx import LockedHost, Tx

DEFAULT_PAGE = 100

_EARLIER = (
    "reservation_id",
    "host_id",
    "idempotency_key",
    "status",
    "expires_at",
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "network_download_bps",
    "network_upload_bps",
    "disk_io_bps",
    "gpu",
    "gpu_profile",
    "defaulted",
)


class Reservations:
    """Lookups and the ways a hold ends other than expiry."""

    def __init__(self, db: Database) -> None:
        self.db = db
        m = db.sql.mark
        self._select_keys = (
            f"SELECT {', '.join(_EARLIER)} FROM reservations "
            f"WHERE host_id IN ({{}}) AND idempotency_key IN ({{}})"
        )
        self._end = (
            f"UPDATE reservations SET status = {m}, ended_at = {m}, instance_id = {m} "
            f"WHERE reservation_id = {m} AND host_id = {m} AND status = '{HELD}' "
            f"RETURNING {', '.join(HOLD_AMOUNTS)}"
        )

    def earlier(self, cursor: Cursor, host_id: str, keys: Sequence[str]) -> dict[str, EarlierHold]:
        """Reservations already made on this host under any of `keys`, by key."""
        return self.earlier_on(cursor, {host_id: keys}).get(host_id, {})

    def earlier_on(
        self, cursor: Cursor, keys: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, EarlierHold]]:
        """`earlier` for several hosts in one statement: host → key → the reservation made under it."""
        hosts = sorted(host for host, wanted in keys.items() if wanted)
        unique = sorted({key for host in hosts for key in keys[host]})
        if not unique:
            return {}
        marks = self.db.sql.marks
        cursor.execute(self._select_keys.format(marks(len(hosts)), marks(len(unique))), (*hosts, *unique))
        read_time = self.db.sql.read_time
        found: dict[str, dict[str, EarlierHold]] = {}
        for rid, host, key, status, expires, *amounts, gpu, profile, defaulted in cursor.fetchall():
            if key not in keys[host]:  # another host's key, used here too
                continue
            vcpus, memory, disk, download, upload, disk_io = amounts
            charge = Charge(vcpus, memory, disk, download, upload, disk_io, gpu, profile, _names(defaulted))
            expires_at = read_time(expires)
            assert expires_at is not None  # the column is NOT NULL
            found.setdefault(host, {})[key] = EarlierHold(rid, host, key, status, expires_at, charge)
        return found

    def find(self, reservation_id: str) -> ReservationInfo:
        with self.db.transaction() as tx:
            return _info(self._row(tx, reservation_id))

    def find_by_key(self, host_id: str, idempotency_key: str) -> ReservationInfo:
        """The reservation made on `host_id` under `idempotency_key` (NotFound when there is none)."""
        query = select(reservations).where(
            reservations.c.host_id == host_id, reservations.c.idempotency_key == idempotency_key
        )
        with self.db.read() as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            raise NotFound(
                f"no reservation on host {host_id!r} with idempotency_key {idempotency_key!r}",
                host=host_id,
                idempotency_key=idempotency_key,
            )
        return _info(row)

    def listing(
        self,
        *,
        host_id: str | None = None,
        status: str | None = None,
        limit: int = DEFAULT_PAGE,
        after: str | None = None,
    ) -> tuple[list[ReservationInfo], int]:
        """A page of reservations in id order after `after`, and how many match in all (a read)."""
        if status is not None and status not in RESERVATION_STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(RESERVATION_STATUSES)}, not {status!r}", field="status"
            )
        if limit < 1:
            raise InvalidRequest("limit must be at least 1", field="limit")
        where = [c for c in (_equal("host_id", host_id), _equal("status", status)) if c is not None]
        page = select(reservations).where(*where).order_by(reservations.c.reservation_id).limit(limit)
        if after is not None:
            page = page.where(reservations.c.reservation_id > after)
        count = select(func.count()).select_from(reservations).where(*where)
        with self.db.read() as conn:
            rows = conn.execute(page).mappings().all()
            total = conn.execute(count).scalar_one()
        return [_info(row) for row in rows], int(total)

    def sweep_due(self, limit: int = 100) -> int:
        """Lock, and so sweep, up to `limit` hosts with a hold past its TTL (`next_expiry` passed), each in a
        short transaction of its own; how many were swept. A fleet search reads hosts' rows without locking
        them, so a host filled by holds nobody came back for would otherwise look full to every search until
        something else locked it (`ledger serve` calls this every `sweep_interval`)."""
        due = (
            select(hosts.c.host_id)
            .where(hosts.c.next_expiry <= self.db.clock())
            .order_by(hosts.c.next_expiry)
            .limit(limit)
        )
        with self.db.read() as conn:
            host_ids = [str(host_id) for host_id in conn.execute(due).scalars()]
        for host_id in host_ids:
            self.db.retrying(functools.partial(_lock, host_id=host_id))
        return len(host_ids)

    def release(self, reservation_id: str) -> ReservationInfo:
        """Give a held reservation back; releasing one that already ended says how it ended."""
        if not isinstance(reservation_id, str) or not reservation_id:
            raise InvalidRequest("reservation_id must be a non-empty string", field="reservation_id")
        host_id = self.find(reservation_id).host_id
        with self.db.transaction() as tx:
            host = tx.lock(host_id)
            self.end(tx, host, reservation_id, RELEASED, "api")
            return _info(self._row(tx, reservation_id))

    def consume(self, tx: Tx, host: LockedHost, reservation_id: str, instance_id: str, cause: str) -> None:
        """The instance the hold was for has arrived: the hold ends and the instance counts instead. An
        unknown id, one of another host, or one that already ended changes nothing (the instance is
        counted either way, once)."""
        self.end(tx, host, reservation_id, CONSUMED, cause, instance_id)

    def end(
        self,
        tx: Tx,
        host: LockedHost,
        reservation_id: str,
        status: str,
        cause: str,
        instance_id: str | None = None,
    ) -> None:
        """End a held reservation of `host` as `status` (nothing if it is not held there)."""
        now = self.db.sql.bind_time(tx.clock())
        tx.cursor.execute(self._end, (status, now, instance_id, reservation_id, host.host_id))
        tx.end_holds(host, tx.cursor.fetchall(), status, cause)

    @staticmethod
    def _row(tx: Tx, reservation_id: str) -> Any:
        assert tx.conn is not None
        row = (
            tx.conn.execute(select(reservations).where(reservations.c.reservation_id == reservation_id))
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise NotFound(f"no reservation {reservation_id!r}", reservation_id=reservation_id)
        return row


def _equal(column: str, value: str | None) -> Any:
    return None if value is None else reservations.c[column] == value


def _names(defaulted: str | None) -> tuple[str, ...]:
    return tuple(defaulted.split(",")) if defaulted else ()


def _info(row: Any) -> ReservationInfo:
    return ReservationInfo(
        reservation_id=row["reservation_id"],
        host_id=row["host_id"],
        status=row["status"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        ended_at=row["ended_at"],
        instance_id=row["instance_id"],
        idempotency_key=row["idempotency_key"],
        charge=Charge(
            row["vcpus"],
            row["memory_bytes"],
            row["disk_bytes"],
            row["network_download_bps"],
            row["network_upload_bps"],
            row["disk_io_bps"],
            row["gpu"],
            row["gpu_profile"],
            _names(row["defaulted"]),
        ),
    )


def _lock(tx: Tx, host_id: str) -> None:
    tx.lock(host_id)  # locking sweeps the host's expired holds; the commit writes what it ended
