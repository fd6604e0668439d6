"""Engines per dialect: SQLite in WAL with `BEGIN IMMEDIATE` transactions, PostgreSQL over psycopg 3.

A read-only engine is for commands that only read (`ledger status`, `ledger config`, ...). The database
enforces it, so a reader cannot write by mistake: SQLite opens the file with `mode=ro` (and never creates
it: a mistyped path is an error naming it), PostgreSQL sessions default to read-only transactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from ledger.config import mask_url
from ledger.core.errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30
READ_ONLY = "ledger_read_only"  # a connection execution option: the transaction only reads
AUTOCOMMIT = "AUTOCOMMIT"  # SQLAlchemy's isolation level for statements that are each their own transaction
SQLITE_CACHE_KIB = 64 * 1024
READER_CONNECT_TIMEOUT_S = 10  # a command waits this long for an unreachable PostgreSQL, not minutes
MIGRATE_HINT = "run `ledger db upgrade` (starting `ledger serve` migrates too)"


def normalize_url(url: str) -> URL:
    """Parse a database URL; `postgresql://` and `postgres://` mean psycopg 3. Errors never show a
    password."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(
            f"invalid database URL {mask_url(url)!r}: expected sqlite:///PATH or "
            "postgresql://USER@HOST[:PORT]/DB",
            setting="database_url",
        ) from None
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r} in {mask_url(url)!r}: use sqlite or "
            "postgresql",
            setting="database_url",
        )
    return parsed


def describe(url: str | URL) -> str:
    """The database as messages name it: a SQLite file's path, else the URL with its password masked."""
    parsed = url if isinstance(url, URL) else normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(sqlite_path(parsed) or parsed.database or ":memory:")
    return mask_url(parsed.render_as_string(hide_password=False))


def sqlite_path(url: URL) -> Path | None:
    """The file a SQLite URL names (None for an in-memory database)."""
    database = url.database or ""
    if database in {"", ":memory:"}:
        return None
    if url.query.get("uri") and database.startswith("file:"):
        database = unquote(database.removeprefix("file:").split("?", 1)[0])
    return Path(database).expanduser()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_read_only(engine: Engine) -> bool:
    """Whether `engine` was made with `make_engine(..., read_only=True)`."""
    return bool(engine.get_execution_options().get(READ_ONLY, False))


def _read_only_sqlite_url(url: URL) -> URL:
    """`file:PATH?mode=ro` as a SQLite URI: the file must exist, and nothing can write to it."""
    path = sqlite_path(url)
    if path is None:
        raise ConfigError("an in-memory SQLite database cannot be read: it is empty", setting="database_url")
    if not path.exists():
        raise ConfigError(
            f"no ledger database at {path} (no such file): check the database URL, or create it: "
            + MIGRATE_HINT,
            setting="database_url",
        )
    if not path.is_file():
        raise ConfigError(f"the database path {path} is not a file", setting="database_url")
    return url.set(database="file:" + quote(str(path.resolve())), query={"mode": "ro", "uri": "true"})


def _sqlite_engine(url: URL, *, foreign_keys: bool, read_only: bool) -> Engine:
    path = sqlite_path(url)
    if path is not None and not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the database's directory {path.parent}: {exc.strerror or exc}",
                setting="database_url",
            ) from None
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=NullPool if foreign_keys is False else None,
        execution_options={READ_ONLY: True} if read_only else {},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue the BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not read_only:  # both are written into the file (a reader finds WAL already set)
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


def _read_only_postgresql_args(url: URL) -> dict[str, Any]:
    """Every transaction of the session read-only (the server refuses writes and row locks), and a bounded
    wait for a server that does not answer."""
    options = " ".join(
        filter(None, [str(url.query.get("options") or ""), "-c default_transaction_read_only=on"])
    )
    return {"options": options, "connect_timeout": READER_CONNECT_TIMEOUT_S}


def make_engine(url: str, *, for_migration: bool = False, read_only: bool = False) -> Engine:
    """An engine for `url`; migrations run with SQLite foreign keys off (batch table rebuilds need it);
    `read_only`: see the module docstring."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if read_only:
            parsed = _read_only_sqlite_url(parsed)
        return _sqlite_engine(parsed, foreign_keys=not for_migration, read_only=read_only)
    if read_only:
        return create_engine(
            parsed,
            pool_size=2,
            max_overflow=2,
            connect_args=_read_only_postgresql_args(parsed),
            execution_options={READ_ONLY: True},
        )
    # No pre-ping: it costs a round trip per transaction; a connection dropped by a server restart fails
    # one transaction (reported `unavailable`, retried by the caller) and is replaced.
    # LIFO: a quiet service keeps reusing its warmest connection (and server backend) instead of cycling
    # through every idle one.
    return create_engine(parsed, pool_size=10, max_overflow=20, pool_recycle=1800, pool_use_lifo=True)


def index_walking_engine(engine: Engine) -> Engine:
    """Autocommit PostgreSQL connections whose planner reads down an index rather than scanning a table
    and sorting it, for the whole session: a walk down the room index (store/fleet.py) then needs no
    transaction to say so (BEGIN, a set_config and COMMIT: three round trips a walk). Nothing else runs on
    them: for other queries a scan is often right. The pool is made as `engine`'s is (the same URL and
    connect arguments: a read-only ledger's walks are read-only sessions too); it opens connections only
    as walks need them, so it holds about as many as searches run at once."""
    pool = engine.pool.recreate()

    @event.listens_for(pool, "connect")
    def _prefer_indexes(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_bitmapscan = off")

    return create_engine(engine.url, pool=pool, isolation_level=AUTOCOMMIT)
