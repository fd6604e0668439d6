"""What the hot statements need to run on a bare DBAPI cursor: each dialect's parameter mark and row lock,
and the UTC time columns' values converted the way SQLAlchemy's column type would convert them.

Admission's statements are a handful of small ones per group; SQLAlchemy's execution layer costs several
times what the database does for those, so they are plain SQL text on the DBAPI cursor of the transaction's
own connection. Values go through the columns' own type processors, so the rows are the ones the Core path
would write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import Column, Dialect, Table

from ledger.store.models import (
    AllocationLog,
    Host,
    HostCapacity,
    Image,
    Instance,
    OciCache,
    Placement,
    Reservation,
    UTCDateTime,
    Volume,
)

hosts = cast(Table, Host.__table__)
capacities = cast(Table, HostCapacity.__table__)
instances = cast(Table, Instance.__table__)
volumes = cast(Table, Volume.__table__)
images = cast(Table, Image.__table__)
oci_cache = cast(Table, OciCache.__table__)
reservations = cast(Table, Reservation.__table__)
allocation_log = cast(Table, AllocationLog.__table__)
placements = cast(Table, Placement.__table__)

Cursor = Any  # a DBAPI cursor (sqlite3 or psycopg): neither has a common typed interface


@dataclass(frozen=True, slots=True)
class Sql:
    """A dialect's spelling of the hot statements' parts."""

    sqlite: bool
    mark: str  # the DBAPI parameter mark: sqlite3 `?`, psycopg `%s`
    for_update: str  # a row lock on SELECT (SQLite: BEGIN IMMEDIATE already holds the database's)
    bind_time: Callable[[datetime | None], Any]
    read_time: Callable[[Any], datetime | None]

    @classmethod
    def of(cls, dialect: Dialect) -> Sql:
        sqlite = dialect.name == "sqlite"
        return cls(
            sqlite=sqlite,
            mark="?" if sqlite else "%s",
            for_update="" if sqlite else " FOR UPDATE",
            bind_time=binder(hosts.c.next_expiry, dialect),
            read_time=_reader(hosts.c.next_expiry, dialect),
        )

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def insert(self, table: str, columns: tuple[str, ...], rows: int = 1) -> str:
        """An INSERT of `rows` rows of `columns`."""
        row = f"({self.marks(len(columns))})"
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def binder(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """How `column`'s type turns a value into a driver parameter (a faster twin where one is proven)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return same
    if isinstance(column.type, UTCDateTime) and all(
        process(probe) == _utc_text(probe) for probe in _TIME_PROBES
    ):
        return _utc_text  # SQLite: the same text, from one C call instead of a format over a dict
    return process


def same(value: Any) -> Any:
    """The binder of a type that passes values to the driver as they are."""
    return value


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


def _reader(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return process if process is not None else same


def check_unbound(table: Table, columns: tuple[str, ...], dialect: Dialect) -> None:
    """`columns` must be all of `table`'s but a generated id, and only its UTC times may need binding:
    the row builders write every other value as it is."""
    names = {c.name for c in table.c} - {"id"}
    if set(columns) != names or len(columns) != len(names):
        raise RuntimeError(f"the row builder's columns for {table.name} are not the model's: {sorted(names)}")
    for name in columns:
        column = table.c[name]
        if not isinstance(column.type, UTCDateTime) and binder(column, dialect) is not same:
            raise RuntimeError(f"{table.name}.{name} is written unbound, but its type binds values")
