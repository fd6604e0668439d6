"""Transactions per dialect: where a write transaction comes from, how a batch of writes shares one, and
what the last committed transaction saw of each host.

SQLite has one writer at a time: the threads of this process queue on a lock instead of spinning in
SQLite's busy handler (which sleeps in steps of up to 100 ms); other processes still wait there. An event
loop may also run a transaction in place when the lock is free (`try_now`), on a connection of its own
whose busy timeout is 0, instead of paying two thread hops.

On a read-only engine (`make_engine(..., read_only=True)`, what commands that only read use) a transaction
runs the same code on a connection the database will not let write, and is rolled back: the host row is
read without a lock, and holds whose time has passed are left out of what is pending (as the sweep of a
write transaction would) without being marked expired.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import PoolProxiedConnection

from ledger.core.errors import TransientConflict, Unavailable
from ledger.core.results import HELD
from ledger.store.engine import AUTOCOMMIT, READ_ONLY, is_read_only
from ledger.store.rows import HOLD_AMOUNTS
from ledger.store.sql import Sql
from ledger.store.tx import LockedHost, Statements, Tx

T = TypeVar("T")
log = logging.getLogger("ledger.store")
CONFLICT_ATTEMPTS = 3
# A batch's statements carry many-row IN lists and writes. psycopg prepares a statement after its fifth run,
# and PostgreSQL then keeps a generic plan if it costs no more than the custom ones did: chosen while a
# table is small, that is a sequential scan, and it stays one as the table grows (processed_events: 3 ms a
# batch at 10,000 events, 41 ms at 20,000). Planning each batch statement afresh costs far less.
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


class ReadOnlyError(RuntimeError):
    """Something tried to write through a ledger opened read-only, and the database refused."""


class Database:
    """Write transactions on one engine (see the module docstring)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self.sql = Sql.of(engine.dialect)
        self.sqlite = self.sql.sqlite
        self.read_only = is_read_only(engine)
        self.statements = _read_only_statements(self.sql) if self.read_only else Statements(self.sql)
        self._driver_errors: tuple[type[Exception], ...] = (
            OperationalError,
            engine.dialect.loaded_dbapi.OperationalError,
        )
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer: contextlib.AbstractContextManager[Any] = (
            self._write_lock if self.sqlite else contextlib.nullcontext()
        )
        # host id → the host as the last transaction this process committed left it (a read of it, really);
        # kept on PostgreSQL only, for the one-round-trip strategy (store/optimistic.py)
        self.committed: dict[str, LockedHost] = {}
        self._nowait: PoolProxiedConnection | None = None
        # The host rows as `try_now`'s last commit left them, and SQLite's data_version then: while no other
        # connection has committed since (the same data_version), they are the rows, and need no read.
        self._nowait_hosts: dict[str, LockedHost] = {}
        self._nowait_version: int | None = None
        self._checkpointer: _Checkpointer | None = None

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._nowait is not None:
            self._nowait.close()
            self._nowait = None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction, committed when the block ends (rolled back if it raises); inside `batch()`
        the batch's own."""
        current: Tx | None = getattr(self._local, "tx", None)
        if current is not None:
            yield current
            return
        if self.read_only:
            with self._read_only_transaction() as tx:
                yield tx
            return
        try:
            with self._writer, self.engine.begin() as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    tx = Tx(cursor, self.statements, self.clock, conn)
                    yield tx
                    tx.flush()
                finally:
                    cursor.close()
        except self._driver_errors as exc:
            raise _unavailable(exc) from exc
        self._committed(tx)

    @contextmanager
    def _read_only_transaction(self) -> Iterator[Tx]:
        """A transaction on a read-only engine, rolled back at the end. What a sweep changed is not written
        back; a hold someone tried to add is, so the database refuses it instead of it vanishing."""
        try:
            with self.engine.connect() as conn:
                conn.begin()
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    tx = Tx(cursor, self.statements, self.clock, conn)
                    yield tx
                    if tx.holds or tx.placements:  # a write by mistake: the database refuses it
                        tx.flush()
                finally:
                    cursor.close()
                    conn.rollback()
        except Exception as exc:
            if _refused_write(exc):  # a bug: the caller should have opened the ledger for writing
                raise ReadOnlyError(f"the ledger was opened read-only: {_reason(exc)}") from exc
            if isinstance(exc, self._driver_errors):
                raise _unavailable(exc) from exc
            raise

    def retrying(self, work: Callable[[Tx], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
        """`work` in a write transaction, run again (up to `attempts` times in all) when a concurrent
        transaction made the database roll it back: a deadlock is a conflict to retry, not an outage.
        Inside a batch the batch's transaction is spoiled, so there the conflict goes to its caller."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as tx:
                    return work(tx)
            except TransientConflict:
                if attempt == attempts or self.in_batch:
                    raise
                log.info("a transaction conflicted with a concurrent one (attempt %d); retrying", attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A transaction on a connection of its own, for what is not a write of the ledger's rows (`place`
        holds its keys' advisory locks in one); a dropped connection is `Unavailable`."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except self._driver_errors as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def read(self, on: Engine | None = None) -> Iterator[Connection]:
        """Reads that write nothing, on this database's engine or another of its engines (`on`). SQLite:
        one transaction without the write lock (a plain deferred BEGIN). PostgreSQL: autocommit, each
        statement on its own snapshot, as READ COMMITTED reads inside a transaction too, without the BEGIN
        and COMMIT round trips. A dropped connection is `Unavailable`."""
        options: dict[str, Any] = {READ_ONLY: True}
        if not self.sqlite:
            options["isolation_level"] = AUTOCOMMIT
        try:
            with (on or self.engine).connect().execution_options(**options) as conn, conn.begin():
                yield conn
        except self._driver_errors as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def batch(self) -> Iterator[Tx]:
        """Run every write in the block in one transaction (committed at the end, rolled back on error)."""
        if getattr(self._local, "tx", None) is not None:
            raise RuntimeError("batches do not nest")
        with self.transaction() as tx:
            if not self.sqlite and tx.conn is not None:
                tx.conn.exec_driver_sql(CUSTOM_PLANS)
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None

    @property
    def in_batch(self) -> bool:
        return getattr(self._local, "tx", None) is not None

    def try_now(self, work: Callable[[Tx], T]) -> T | None:
        """SQLite: `work` in a write transaction right now, or None at once if another writer (a thread of
        this process, or another process) has the lock. None on PostgreSQL, whose statements wait on the
        network: they belong on a thread."""
        if not self.sqlite or self.read_only or not self._write_lock.acquire(blocking=False):
            return None
        try:
            dbapi = self._nowait_connection()
            try:
                dbapi.execute("BEGIN IMMEDIATE")  # fails at once when another writer has the lock
            except sqlite3.OperationalError:
                return None
            cursor = dbapi.cursor()
            try:
                version = cursor.execute("PRAGMA data_version").fetchone()[0]
                if version != self._nowait_version:  # another connection wrote: read what it left
                    self._nowait_hosts = {}
                tx = Tx(cursor, self.statements, self.clock, None, known=self._nowait_hosts)
                result = work(tx)
                tx.flush()
                dbapi.commit()
            except BaseException as exc:
                dbapi.rollback()
                self._nowait_hosts = {}  # the transaction may have moved them before it failed
                self._nowait_version = None
                if isinstance(exc, sqlite3.OperationalError):
                    raise _unavailable(exc) from exc
                raise
            finally:
                cursor.close()
            self._nowait_hosts.update(tx.hosts)
            self._nowait_version = version
            self._committed(tx)
            return result
        finally:
            self._write_lock.release()

    def _committed(self, tx: Tx) -> None:
        if self.sqlite:  # only the PostgreSQL one-round-trip strategy reads `committed`
            return
        for host_id, host in tx.hosts.items():
            self.committed[host_id] = host.snapshot()

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


def _read_only_statements(sql: Sql) -> Statements:
    """A reader's statements: the host row without a row lock (PostgreSQL refuses one in a read-only
    transaction), and the sweep as a SELECT of the same columns with the same parameters (ended_at, host,
    now), so the transaction takes expired holds off the host's pending totals in memory only."""
    statements = Statements(replace(sql, for_update=""))
    m = sql.mark
    statements.sweep = (
        f"SELECT {', '.join(HOLD_AMOUNTS)} FROM reservations "
        f"WHERE expires_at <= {m} AND host_id = {m} AND status = '{HELD}' AND expires_at <= {m}"
    )
    return statements


def _refused_write(exc: BaseException) -> bool:
    """The database refused a write because the connection is read-only (SQLite's SQLITE_READONLY,
    PostgreSQL's read_only_sql_transaction)."""
    orig = getattr(exc, "orig", None) or exc
    sqlite = str(getattr(orig, "sqlite_errorname", ""))
    return sqlite.startswith("SQLITE_READONLY") or getattr(orig, "sqlstate", "") == "25006"


# PostgreSQL's "deadlock detected" and "could not serialize access": the transaction was rolled back because
# of a concurrent one, not because the database is down
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


def _unavailable(exc: BaseException) -> Unavailable:
    """The driver's error as the ledger reports it: a conflict to retry, or the database unavailable."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return TransientConflict(f"conflicted with a concurrent transaction, rolled back: {_reason(exc)}")
    return Unavailable(f"database unavailable: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip()


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
