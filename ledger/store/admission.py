"""Group admission: many validates admitted in one transaction with a handful of statements per host.

`Ledger.reserve` is the reference. For a group of requests this path reads each host row once (locked),
looks up the group's idempotency keys in one query, decides every request in Python in arrival order
against the totals its predecessors left, then writes all holds and log rows with one `executemany` each
and moves the host's totals once. The decisions are the reference's: refusals are built by the same code
from the same numbers, and anything unusual is handed to `Ledger.reserve` itself (a GPU request, a host
with holds due to expire, an unknown host).

The hot statements run on the DBAPI cursor of the transaction's own connection: for these one-row
statements SQLAlchemy's execution layer costs several times what the database does. Values are converted
with the columns' own SQLAlchemy type processors, so the rows are the ones the Core path would write. On
PostgreSQL the writes go as one statement (a network round trip each costs more than the work). `admit`
runs in a transaction of a SQLAlchemy Connection and may fall back on `Ledger.reserve`; `admit_plain`
runs in one opened on the bare DBAPI connection and answers None where the fallback would be needed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Table

from ledger.core.capacity import AllocationRequest
from ledger.core.errors import LedgerError
from ledger.core.resources import ADMISSION_ORDER
from ledger.store.models import UTCDateTime
from ledger.store.results import Grant
from ledger.store.totals import PEND_COLUMN, TOTAL_COLUMNS

if TYPE_CHECKING:
    from ledger.store.ledger import Ledger

Hold = tuple[str, AllocationRequest, str | None, float | None]  # host, request, idempotency key, ttl
Outcome = Grant | LedgerError


class GroupAdmission:
    """Admits a group of holds inside the caller's transaction (see the module docstring)."""

    def __init__(self, ledger: Ledger, hosts: Table, reservations: Table, allocation_log: Table) -> None:
        self.ledger = ledger
        dialect = ledger.engine.dialect
        sqlite = dialect.name == "sqlite"
        mark = "?" if sqlite else "%s"  # sqlite3: qmark; psycopg: format

        def marks(n: int) -> str:
            return ", ".join([mark] * n)

        self._host_columns = (
            "host_id",
            "capacity_version",
            "next_expiry",
            "gpu_total",
            "gpu_status",
            *TOTAL_COLUMNS,
        )
        self._select_host = (
            f"SELECT {', '.join(self._host_columns)} FROM hosts WHERE host_id = {mark}"
            + ("" if sqlite else " FOR UPDATE")  # SQLite: BEGIN IMMEDIATE already holds the write lock
        )
        self._mark = mark
        self._sqlite = sqlite
        self._hold_columns = tuple(c.name for c in reservations.c)
        self._select_keys = (
            f"SELECT {', '.join(self._hold_columns)} FROM reservations "
            f"WHERE host_id = {mark} AND idempotency_key IN ({{marks}})"
        )
        self._insert_hold = (
            f"INSERT INTO reservations ({', '.join(self._hold_columns)}) "
            f"VALUES ({marks(len(self._hold_columns))})"
        )
        self._log_columns = tuple(c.name for c in allocation_log.c if c.name != "id")
        self._insert_log = (
            f"INSERT INTO allocation_log ({', '.join(self._log_columns)}) "
            f"VALUES ({marks(len(self._log_columns))})"
        )
        pending = ", ".join(f"{c} = {c} + {mark}" for c in PEND_COLUMN.values())
        self._move_totals = f"UPDATE hosts SET {pending}, next_expiry = {mark} WHERE host_id = {mark}"
        self._bind_hold = binders(reservations, self._hold_columns, dialect)
        self._bind_log = binders(allocation_log, self._log_columns, dialect)
        self._read_time = _reader(hosts.c.next_expiry, dialect)
        self._bind_time = binder(hosts.c.next_expiry, dialect)

    def admit(self, conn: Connection, holds: Sequence[Hold]) -> list[Outcome]:
        """The outcome of every hold, in order; requests for different hosts do not affect each other."""
        outcomes = self._admit(conn, conn.connection.dbapi_connection, holds)
        assert outcomes is not None  # with a Connection, the reference path is always at hand
        return outcomes

    def admit_plain(self, dbapi_connection: Any, holds: Sequence[Hold]) -> list[Outcome] | None:
        """`admit` in a transaction opened on the bare DBAPI connection, or None (the caller rolls back)
        when a request needs `Ledger.reserve`, which works through SQLAlchemy."""
        return self._admit(None, dbapi_connection, holds)

    def _admit(
        self, conn: Connection | None, dbapi_connection: Any, holds: Sequence[Hold]
    ) -> list[Outcome] | None:
        outcomes: list[Outcome | None] = [None] * len(holds)
        by_host: dict[str, list[int]] = {}
        for index, hold in enumerate(holds):
            by_host.setdefault(hold[0], []).append(index)
        cursor = dbapi_connection.cursor()
        try:
            for host_id, indices in by_host.items():
                items = [(i, holds[i]) for i in indices]
                if not self._admit_on_host(conn, cursor, host_id, items, outcomes):
                    return None
        finally:
            cursor.close()
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _admit_on_host(
        self,
        conn: Connection | None,
        cursor: Any,
        host_id: str,
        items: list[tuple[int, Hold]],
        outcomes: list[Outcome | None],
    ) -> bool:
        """Decide `items` (all for `host_id`) and write them; False if only the reference path can and
        there is no `conn` to run it on."""
        ledger = self.ledger
        cursor.execute(self._select_host, (host_id,))
        found = cursor.fetchone()
        host = None if found is None else SimpleNamespace(**dict(zip(self._host_columns, found, strict=True)))
        if host is not None:
            host.next_expiry = self._read_time(host.next_expiry)
        if host is None or not self._simple(host, items, cached_only=conn is None):
            if conn is None:
                return False
            for index, (_, request, key, ttl) in items:  # the reference path, one by one
                outcomes[index] = _outcome(ledger, host_id, request, key, ttl)
            return True
        available = ledger._available(conn, host)
        earlier = self._earlier_holds(cursor, host_id, [key for _, (_, _, key, _) in items if key])
        added = {column: 0 for column in PEND_COLUMN.values()}
        new_holds: list[dict[str, Any]] = []
        log_rows: list[dict[str, Any]] = []
        for index, (_, request, key, asked_ttl) in items:
            try:
                ttl = ledger._hold_ttl(asked_ttl, key)
                if key is not None and key in earlier:
                    outcomes[index] = ledger._replay(earlier[key], request)
                    continue
                demand = {r: request.demand(r) for r in ADMISSION_ORDER}
                if any(available[r] < amount for r, amount in demand.items() if amount > 0):
                    refusal = ledger._refusal(conn, host, request)  # the reference decides, same numbers
                    if refusal is not None:
                        raise refusal
            except LedgerError as exc:
                outcomes[index] = exc
                continue
            row = ledger._hold_row(host_id, request, key, ttl)
            new_holds.append(row)
            if key is not None:
                earlier[key] = row
            delta = {}
            for resource, column in PEND_COLUMN.items():
                amount = demand[resource]
                if amount:
                    available[resource] = max(0, available[resource] - amount)
                    setattr(host, column, getattr(host, column) + amount)
                    added[column] += amount
                    delta[column] = amount
            if delta:
                log_rows.append(
                    ledger._log_row(host_id, "reservation", row["reservation_id"], "reserved", "api", delta)
                )
            outcomes[index] = Grant(row["reservation_id"], host_id, row["status"], row["expires_at"], key)
        self._write(cursor, host_id, host.next_expiry, added, new_holds, log_rows)
        return True

    def _simple(self, host: SimpleNamespace, items: list[tuple[int, Hold]], *, cached_only: bool) -> bool:
        """Whether this path may decide: no GPU wanted, no hold on the host due to expire, and (without a
        Connection to reload them on) the host's capacities in the cache."""
        if any(request.wants_gpu for _, (_, request, _, _) in items):
            return False
        if host.next_expiry is not None and self.ledger.clock() >= host.next_expiry:
            return False
        return not cached_only or self.ledger.capacities_cached(host)

    def _earlier_holds(self, cursor: Any, host_id: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Reservations already made on this host under any of `keys`, by key."""
        if not keys:
            return {}
        unique = sorted(set(keys))
        cursor.execute(
            self._select_keys.format(marks=", ".join([self._mark] * len(unique))), (host_id, *unique)
        )
        found = {}
        for values in cursor.fetchall():
            row = dict(zip(self._hold_columns, values, strict=True))
            row["expires_at"] = self._read_time(row["expires_at"])
            found[row["idempotency_key"]] = row
        return found

    def _write(
        self,
        cursor: Any,
        host_id: str,
        next_expiry: datetime | None,
        added: dict[str, int],
        new_holds: list[dict[str, Any]],
        log_rows: list[dict[str, Any]],
    ) -> None:
        """The group's holds and log rows, then the host's totals moved once (and its next expiry lowered).

        SQLite: three local calls. PostgreSQL: one statement (the inserts as data-modifying CTEs of the
        update), since there every statement is a network round trip.
        """
        if not new_holds:
            return
        earliest = min(row["expires_at"] for row in new_holds)
        next_expiry = earliest if next_expiry is None else min(next_expiry, earliest)
        move = (*added.values(), self._bind_time(next_expiry), host_id)
        holds = [self._bind_hold(row) for row in new_holds]
        logs = [self._bind_log(row) for row in log_rows]
        if self._sqlite:
            cursor.executemany(self._insert_hold, holds)
            if logs:
                cursor.executemany(self._insert_log, logs)
            cursor.execute(self._move_totals, move)
            return
        ctes = [f"new_holds AS ({self._rows_insert('reservations', self._hold_columns, len(holds))})"]
        if logs:
            ctes.append(f"new_logs AS ({self._rows_insert('allocation_log', self._log_columns, len(logs))})")
        statement = f"WITH {', '.join(ctes)} {self._move_totals}"
        cursor.execute(statement, [value for row in holds + logs for value in row] + list(move))

    def _rows_insert(self, table: str, columns: tuple[str, ...], count: int) -> str:
        row = f"({', '.join([self._mark] * len(columns))})"
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"


def _outcome(
    ledger: Ledger, host_id: str, request: AllocationRequest, key: str | None, ttl: float | None
) -> Outcome:
    try:
        return ledger.reserve(host_id, request, idempotency_key=key, ttl=ttl)
    except LedgerError as exc:
        return exc


def binder(column: Column[Any], dialect: Any) -> Callable[[Any], Any]:
    """How `column`'s type turns a value into a driver parameter (a faster twin where one is proven)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return same
    if isinstance(column.type, UTCDateTime) and all(
        process(probe) == _utc_text(probe) for probe in _TIME_PROBES
    ):
        return _utc_text  # SQLite: the same text, from one C call instead of a format over a dict
    return process


_TIME_PROBES = (
    datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
    datetime(1, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
    datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    None,
)


def _utc_text(value: datetime | None) -> str | None:
    """A UTC column's value as SQLite stores it (`binder` checks that SQLAlchemy would write the same)."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # what the ledger's clock gives: "…+00:00" without the offset
        return value.isoformat(" ", "microseconds")[:-6]
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _reader(column: Column[Any], dialect: Any) -> Callable[[Any], Any]:
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return process if process is not None else same


def binders(
    table: Table, columns: tuple[str, ...], dialect: Any
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row dict → the parameter tuple for `columns`, each value as the column's type would bind it."""
    converted = [
        (position, process)
        for position, name in enumerate(columns)
        if (process := binder(table.c[name], dialect)) is not same
    ]
    if len(columns) < 2:  # itemgetter of one key returns the value, not a tuple
        raise ValueError("binders() is for rows of several columns")
    values_of = operator.itemgetter(*columns)  # one C call for the whole row

    def bind(row: dict[str, Any]) -> tuple[Any, ...]:
        values = list(values_of(row))
        for position, process in converted:
            values[position] = process(values[position])
        return tuple(values)

    return bind


def same(value: Any) -> Any:
    """The binder of a type that passes values to the driver as they are."""
    return value
