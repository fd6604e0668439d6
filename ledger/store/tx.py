"""One write transaction, on either engine: the host rows it has locked, their totals kept here and written
back once at the end, and the history rows it adds, written together.

Every write that changes what a host owes locks the host's row first (SQLite: the transaction began with
`BEGIN IMMEDIATE` and holds the database's write lock; PostgreSQL: `SELECT … FOR UPDATE`), so a reservation
turning into an instance is never counted twice or not at all. Locking also sweeps the host's expired holds.
Within the transaction the totals move in memory (each move checked so no total can pass what a BIGINT
holds); `flush` writes each changed host row once, with its revision bumped, and the buffered rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection

from ledger.core.admission import check_totals
from ledger.core.errors import UnknownHost
from ledger.core.placement import room
from ledger.core.results import EXPIRED, HELD
from ledger.store.rows import (
    HOLD_AMOUNTS,
    HOLD_COLUMNS,
    LOG_COLUMNS,
    PLACEMENT_COLUMNS,
    Delta,
    hold_delta,
    log_row,
)
from ledger.store.sql import Cursor, Sql, hosts
from ledger.store.totals import DERIVED_COLUMNS, LIMIT_COLUMNS, TOTAL_COLUMNS, allocated, derived, pending

# The value each NOT NULL column of a fresh host row starts with (the JSON labels: an empty object).
_FRESH_HOST: dict[str, object] = {
    c.name: "{}" if isinstance(c.type, JSON) else 0
    for c in hosts.c
    if not c.nullable and c.name not in {"host_id", "created_at", "updated_at"}
}
_FRESH_HOST["room"] = room((0,) * len(LIMIT_COLUMNS), (0,) * len(LIMIT_COLUMNS))  # no limit: all room
HOST_COLUMNS = (
    "host_id",
    "capacity_version",
    "revision",
    "next_expiry",
    "gpu_total",
    "gpu_busy",
    *LIMIT_COLUMNS,
    *TOTAL_COLUMNS,
    "room",
)
_ROWS_PER_INSERT = 256  # rows of one multi-row INSERT (PostgreSQL binds at most 65,535 parameters)
UNREGISTERED_HINT = "host is not registered: run `ledger host refresh` on it, or publish host.capacity"


def unknown_host(host_id: str) -> UnknownHost:
    """The error every door gives for a host the database does not have."""
    return UnknownHost(f"unknown host {host_id!r}: {UNREGISTERED_HINT}", host=host_id)


@dataclass(slots=True)
class LockedHost:
    """A host row as this transaction holds it locked; `totals` and `next_expiry` are current here."""

    host_id: str
    capacity_version: int
    revision: int
    next_expiry: datetime | None
    gpu_total: int
    gpu_busy: int
    limits: tuple[int, ...]  # effective limits, RESOURCES order
    totals: dict[str, int]
    room: float = 1.0  # as stored (totals.derived: it may over-state the room a little, never under-state)
    changed: bool = False  # written back by `flush` (and its revision bumped)
    moved: set[str] = field(default_factory=set)  # the totals this transaction changed (flush writes those)

    @classmethod
    def from_row(cls, row: Sequence[Any], read_time: Any) -> LockedHost:
        """A host from its HOST_COLUMNS, as a SELECT returns them."""
        fixed = 6 + len(LIMIT_COLUMNS)
        end = fixed + len(TOTAL_COLUMNS)
        return cls(
            row[0],
            row[1],
            row[2],
            read_time(row[3]),
            row[4],
            row[5],
            tuple(row[6:fixed]),
            dict(zip(TOTAL_COLUMNS, row[fixed:end], strict=True)),
            row[end],
        )

    def row(self, columns: Sequence[str] = TOTAL_COLUMNS) -> tuple[Any, ...]:
        """What `write_host` sets: the totals `columns` and the DERIVED_COLUMNS (then next_expiry, host);
        `room` becomes what is written."""
        totals = self.totals
        values = derived(totals, self.limits, self.room)
        self.room = values[-1]
        return (*[totals[c] for c in columns], *values)

    def snapshot(self) -> LockedHost:
        return LockedHost(
            self.host_id,
            self.capacity_version,
            self.revision,
            self.next_expiry,
            self.gpu_total,
            self.gpu_busy,
            self.limits,
            dict(self.totals),
            self.room,
        )


class Statements:
    """The transaction's own statements for one dialect, built once per engine."""

    def __init__(self, sql: Sql) -> None:
        m = sql.mark
        self.sql = sql
        self.select_host = f"SELECT {', '.join(HOST_COLUMNS)} FROM hosts WHERE host_id = {m}{sql.for_update}"
        # several hosts locked by one statement, in the order `lock_all` takes them one by one (Python's
        # string order is the "C" collation's), so it never waits on them in a cycle with a one-by-one locker
        self._select_hosts = (
            f"SELECT {', '.join(HOST_COLUMNS)} FROM hosts WHERE host_id IN ({{}})"
            + (' ORDER BY host_id COLLATE "C"' if sql.for_update else "")
            + sql.for_update
        )
        # a host row made by a record that arrived before the host registered: every other column empty
        self.fresh_host = tuple(_FRESH_HOST.values())
        self.insert_host = (
            f"INSERT INTO hosts (host_id, created_at, updated_at, {', '.join(_FRESH_HOST)}) "
            f"VALUES ({sql.marks(3 + len(_FRESH_HOST))}) ON CONFLICT (host_id) DO NOTHING"
        )
        self.sweep = (
            f"UPDATE reservations SET status = '{EXPIRED}', ended_at = {m} "
            f"WHERE host_id = {m} AND status = '{HELD}' AND expires_at <= {m} "
            f"RETURNING {', '.join(HOLD_AMOUNTS)}"
        )
        self.earliest_hold = (
            f"SELECT min(expires_at) FROM reservations WHERE host_id = {m} AND status = '{HELD}'"
        )
        # `flush` sets only the totals a transaction moved (a hold moves 6 of 19): one statement per set
        self._host_writers: dict[tuple[str, ...], str] = {}

    def insert_rows(self, cursor: Cursor, table: str, columns: tuple[str, ...], rows: Sequence[Any]) -> None:
        """Insert `rows`: on PostgreSQL as one statement per up to `_ROWS_PER_INSERT` (far less work for
        the server than a statement per row); SQLite, in-process, takes them one by one."""
        if self.sql.sqlite or len(rows) == 1:
            if len(rows) == 1:
                cursor.execute(self.sql.insert(table, columns), rows[0])
            else:
                cursor.executemany(self.sql.insert(table, columns), rows)
            return
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            cursor.execute(self.sql.insert(table, columns, len(chunk)), [v for row in chunk for v in row])

    def select_hosts(self, count: int) -> str:
        return self._select_hosts.format(self.sql.marks(count))

    def host_writer(self, totals: Sequence[str]) -> str:
        """UPDATE of a host row: `totals`, every derived column (limits may have changed too), next_expiry."""
        m = self.sql.mark
        return (
            f"UPDATE hosts SET {', '.join(f'{c} = {m}' for c in (*totals, *DERIVED_COLUMNS))}, "
            f"next_expiry = {m}, revision = revision + 1 WHERE host_id = {m}"
        )

    def write_moved(self, totals: tuple[str, ...]) -> str:
        found = self._host_writers.get(totals)
        if found is None:
            found = self._host_writers[totals] = self.host_writer(totals)
        return found


class Tx:
    """A write transaction in progress (see the module docstring); `conn` is its SQLAlchemy connection, or
    None when it runs on a bare DBAPI connection (SQLite admission on the event loop)."""

    def __init__(
        self,
        cursor: Cursor,
        statements: Statements,
        clock: Any,
        conn: Connection | None,
        known: dict[str, LockedHost] | None = None,
    ) -> None:
        self.cursor = cursor
        self.statements = statements
        self.sql = statements.sql
        self.clock = clock
        self.conn = conn
        self.hosts: dict[str, LockedHost] = {}
        # host rows as they stand in the database already (the caller vouches): `lock` takes them unread
        self.known = known or {}
        self._ahead: dict[str, LockedHost] = {}  # rows `read_ahead` locked and read, not yet taken by `lock`
        self.holds: list[tuple[Any, ...]] = []
        self.logs: list[tuple[Any, ...]] = []
        self.placements: list[tuple[Any, ...]] = []  # fleet-wide place keys of new holds

    def lock(self, host_id: str, *, create: bool = False) -> LockedHost:
        """The host's row, locked until commit, expired holds swept; `create` makes an empty host row for
        records that arrive before the host registered (they must still be counted)."""
        host = self.hosts.get(host_id)
        if host is not None:
            return host
        host = self.known.get(host_id) or self._ahead.pop(host_id, None)
        if host is None:
            host = self._read(host_id, create)
        self.hosts[host_id] = host
        self._sweep(host)
        return host

    def _read(self, host_id: str, create: bool) -> LockedHost:
        s = self.statements
        self.cursor.execute(s.select_host, (host_id,))
        found = self.cursor.fetchone()
        if found is None and create:
            now = self.sql.bind_time(self.clock())
            self.cursor.execute(s.insert_host, (host_id, now, now, *s.fresh_host))
            self.cursor.execute(s.select_host, (host_id,))
            found = self.cursor.fetchone()
        if found is None:
            raise unknown_host(host_id)
        return LockedHost.from_row(found, self.sql.read_time)

    def lock_all(self, host_ids: Iterable[str], *, create: bool = False) -> None:
        """Lock several hosts, always in the same (sorted) order, so two writers never wait on each other."""
        wanted = sorted(set(host_ids))
        self.read_ahead(wanted)
        for host_id in wanted:
            self.lock(host_id, create=create)

    def read_ahead(self, host_ids: Sequence[str]) -> None:
        """Lock and read, in one statement and in sorted order, those of the hosts that exist and are not
        locked yet; `lock` then takes them without a statement of its own. Nothing is raised for a host
        that does not exist: `lock` says so when it is asked for it."""
        unread = sorted({h for h in host_ids if h not in self.hosts and h not in self.known})
        if len(unread) < 2:
            return
        self.cursor.execute(self.statements.select_hosts(len(unread)), unread)
        for row in self.cursor.fetchall():
            host = LockedHost.from_row(row, self.sql.read_time)
            self._ahead[host.host_id] = host

    def move(self, host: LockedHost, delta: Delta) -> None:
        """Shift the host's totals by `delta`; InvalidRequest (nothing moved) if a total would overflow."""
        if not delta:
            return
        totals = dict(host.totals)
        for column, change in delta.items():
            totals[column] += change
        check_totals(host.host_id, allocated(totals), pending(totals))
        host.totals = totals
        host.moved.update(delta)
        host.changed = True

    def log(self, host: LockedHost, kind: str, entity_id: str, action: str, cause: str, delta: Delta) -> None:
        """Add the history row for a change of `delta` (written at `flush`)."""
        if delta:
            at = self.sql.bind_time(self.clock())
            self.logs.append(log_row(host.host_id, at, kind, entity_id, action, cause, delta))

    def hold_expiring(self, host: LockedHost, expires_at: datetime) -> None:
        """A hold expiring at `expires_at` was added: the host's next sweep is due no later."""
        if host.next_expiry is None or expires_at < host.next_expiry:
            host.next_expiry = expires_at
            host.changed = True

    def end_holds(self, host: LockedHost, rows: Sequence[Sequence[Any]], status: str, cause: str) -> None:
        """Take ended holds (rows of HOLD_AMOUNTS) off the host's pending totals, with their history."""
        for reservation_id, *amounts in rows:
            delta = hold_delta(tuple(amounts), -1)
            self.move(host, delta)
            self.log(host, "reservation", reservation_id, status, cause, delta)

    def _sweep(self, host: LockedHost) -> None:
        """Expire the host's holds whose time has come. `next_expiry` is a lower bound on the earliest held
        expiry, so most locks return at once."""
        now = self.clock()
        if host.next_expiry is None or now < host.next_expiry:
            return
        bound = self.sql.bind_time(now)
        self.cursor.execute(self.statements.sweep, (bound, host.host_id, bound))
        self.end_holds(host, self.cursor.fetchall(), EXPIRED, "ttl")
        self.cursor.execute(self.statements.earliest_hold, (host.host_id,))
        host.next_expiry = self.sql.read_time(self.cursor.fetchone()[0])
        host.changed = True

    def flush(self) -> None:
        """Write the buffered holds and history rows, and each changed host row once."""
        s, cursor = self.statements, self.cursor
        # a key another replica placed meanwhile fails the placements: the caller replays it
        for table, columns, rows in (
            ("reservations", HOLD_COLUMNS, self.holds),
            ("allocation_log", LOG_COLUMNS, self.logs),
            ("placements", PLACEMENT_COLUMNS, self.placements),
        ):
            if rows:
                s.insert_rows(cursor, table, columns, rows)
        self.holds, self.logs, self.placements = [], [], []
        writes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}  # hosts that moved the same totals
        for host in self.hosts.values():
            if not host.changed:
                continue
            moved = tuple(c for c in TOTAL_COLUMNS if c in host.moved)
            row = (*host.row(moved), self.sql.bind_time(host.next_expiry), host.host_id)
            writes.setdefault(moved, []).append(row)
            host.revision += 1
            host.changed = False
            host.moved = set()
        for moved, rows in writes.items():
            if len(rows) == 1:
                cursor.execute(s.write_moved(moved), rows[0])
            else:  # psycopg pipelines them: one round trip
                cursor.executemany(s.write_moved(moved), rows)
