"""Engines per dialect: SQLite in WAL with `BEGIN IMMEDIATE` transactions, PostgreSQL over psycopg 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from ledger.core.errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30
READ_ONLY = "ledger_read_only"  # a connection execution option: the transaction only reads
SQLITE_CACHE_KIB = 64 * 1024


def normalize_url(url: str) -> URL:
    """Parse a database URL; `postgresql://` and `postgres://` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(
            f"invalid database URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB",
            setting="database_url",
        ) from None
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r} in {url!r}: use sqlite or postgresql",
            setting="database_url",
        )
    return parsed


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_engine(url: URL, *, foreign_keys: bool) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=NullPool if foreign_keys is False else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue the BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # up to 64 MiB of pages per connection (SQLite's default is 2 MiB): a ledger of 100,000s of rows
        # keeps its indexes' hot pages in memory instead of re-reading them for every admission
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: read-sum-then-insert is only exact when no one else can write. A
        # reader (execution option READ_ONLY) begins a plain deferred transaction and never blocks a writer.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, *, for_migration: bool = False) -> Engine:
    """An engine for `url`; migrations run with SQLite foreign keys off (batch table rebuilds need it)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, foreign_keys=not for_migration)
    # No pre-ping: it costs a round trip per transaction; a connection dropped by a server restart fails
    # one transaction (reported `unavailable`, retried by the caller) and is replaced.
    # LIFO: a quiet service keeps reusing its warmest connection (and server backend) instead of cycling
    # through every idle one.
    return create_engine(parsed, pool_size=10, max_overflow=20, pool_recycle=1800, pool_use_lifo=True)
