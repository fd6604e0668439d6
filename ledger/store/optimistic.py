"""PostgreSQL's faster statement shape for admission: the same decision and rows, written in ONE round trip.

The locked path costs four round trips (BEGIN, the locked read, the writes, COMMIT). This strategy decides
on the host as this process's last committed transaction left it (`Database.committed`: totals at a
revision) and sends one autocommit statement that writes the plan only if the host row is still at that
revision and none of the group's idempotency keys has been used meanwhile:

    WITH moved AS (UPDATE hosts SET pend_… = <after the group>, revision = revision + 1
                   WHERE host_id = … AND revision = <read> AND NOT EXISTS (<an earlier hold of a key>)
                   RETURNING 1),
         new_holds AS (INSERT INTO reservations … SELECT … FROM moved, (VALUES …)),
         new_logs AS (INSERT INTO allocation_log … SELECT … FROM moved, (VALUES …))
    SELECT count(*) FROM moved

A row back means the decision was made on exactly the committed state and is written; none means nothing
was written, and the caller takes the locked path (a newer revision, a sweep due, a key seen before, a
decision that grants nothing). The statement is one transaction and takes the row's lock, so it serializes
with every other writer of the host. `bench/rpc.py` measured what it saves (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table
from sqlalchemy.pool import PoolProxiedConnection

from ledger.core.admission import Admit
from ledger.core.errors import Unavailable
from ledger.core.resources import RESOURCES
from ledger.store.admission import Admission, Answer, HostAsk
from ledger.store.database import Database
from ledger.store.rows import HOLD_COLUMNS, LOG_COLUMNS, PLACEMENT_COLUMNS
from ledger.store.sql import allocation_log, placements, reservations
from ledger.store.totals import DERIVED_COLUMNS, PEND_COLUMN
from ledger.store.tx import LockedHost

_PEND = (*(PEND_COLUMN[r] for r in RESOURCES), "pend_gpu")
_MAX_SHAPES = 512
CONNECT_TIMEOUT_S = 10
RECONNECT_PAUSE_S = 5.0

Shape = tuple[int, int, int, int]  # idempotency keys, holds, history rows, fleet-wide place keys


@dataclass(frozen=True, slots=True)
class _Plan:
    shape: Shape
    params: list[Any]
    answers: list[Answer]
    after: LockedHost  # the host as it will be once the statement is committed


class OptimisticAdmission:
    """Admits a one-host group in one statement, or answers None having written nothing."""

    def __init__(self, db: Database, admission: Admission) -> None:
        self.db = db
        self.admission = admission
        dialect = db.engine.dialect
        self._typed_hold = _typed_row(reservations, HOLD_COLUMNS, dialect)
        self._typed_log = _typed_row(allocation_log, LOG_COLUMNS, dialect)
        self._typed_placement = _typed_row(placements, PLACEMENT_COLUMNS, dialect)
        self._statements: dict[Shape, str] = {}
        # one autocommit connection per thread that admits (the admission thread; place's request threads)
        self._local = threading.local()
        self._connections: set[PoolProxiedConnection] = set()
        self._registry = threading.Lock()
        self._async_connection: Any = None  # likewise, for `admit_async` on an event loop
        self._async_busy = False
        self._async_retry_at = 0.0  # after a failed connect, the loop path waits this long (monotonic)
        self.admitted_groups = 0  # how many groups this strategy settled (tests check it carries the load)

    def close(self) -> None:
        with self._registry:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        connection, self._async_connection = self._async_connection, None
        if connection is not None:  # `aclose` was not awaited: close its socket without a loop
            connection.pgconn.finish()

    async def aclose(self) -> None:
        connection, self._async_connection = self._async_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    # ---- the plan: the shared decision and rows, on the committed state ---------------------------------

    def _plan(
        self, asks: Sequence[HostAsk], read: LockedHost | None = None, fleet_keys: bool = False
    ) -> _Plan | None:
        host_id = asks[0][0]
        if any(host != host_id for host, _ in asks):
            return None
        seen = self.db.committed.get(host_id)
        if read is not None and (seen is None or read.revision > seen.revision):
            seen = read  # a caller's own read of the host (place's search) is newer than ours
        if seen is None or (seen.next_expiry is not None and self.db.clock() >= seen.next_expiry):
            return None
        limits = self.admission.hosts.cached(host_id, seen.capacity_version)
        if limits is None:
            return None
        state = self.admission.hosts.state_of(seen, limits)
        group = [ask for _, ask in asks]
        decision = self.admission.decide(state, group, {})
        if not any(isinstance(outcome, Admit) for outcome in decision.outcomes):
            return None
        plan = self.admission.plan(host_id, group, decision)
        after = seen.snapshot()
        for column, amount in zip(_PEND, (*decision.pending, decision.gpu_pending), strict=True):
            after.totals[column] = amount
        if plan.earliest is not None and (after.next_expiry is None or plan.earliest < after.next_expiry):
            after.next_expiry = plan.earliest
        after.revision += 1
        keys = sorted({ask.key for ask in group if ask.key is not None})
        params: list[Any] = [
            *after.row(_PEND),  # the pending totals and the derived columns (room kept within its slack)
            self.db.sql.bind_time(after.next_expiry),
            host_id,
            seen.revision,
        ]
        if keys:
            params += [host_id, *keys]
        params += [value for row in plan.holds for value in row]
        params += [value for row in plan.logs for value in row]
        placed = self.admission.placements(host_id, group, plan.answers) if fleet_keys else []
        params += [value for row in placed for value in row]
        shape = (len(keys), len(plan.holds), len(plan.logs), len(placed))
        return _Plan(shape, params, plan.answers, after)

    def _done(self, plan: _Plan, found: Any) -> list[Answer] | None:
        if found is None or found[0] != 1:
            return None
        self.db.committed[plan.after.host_id] = plan.after
        self.admitted_groups += 1
        return plan.answers

    # ---- running it -------------------------------------------------------------------------------------

    def admit(
        self, asks: Sequence[HostAsk], *, read: LockedHost | None = None, fleet_keys: bool = False
    ) -> list[Answer] | None:
        """On a thread: the answers, written in one autocommit statement, or None (nothing written).
        `read`: the host as the caller read it, decided on if newer than this process's last commit;
        `fleet_keys`: record new holds' keys as fleet-wide `place` keys (a key placed elsewhere meanwhile
        fails the statement, and the caller's locked path replays that placement).

        Raises Unavailable when the connection fails under the statement: it may have committed or not, and
        deciding again elsewhere could hold twice. A retry with the same idempotency key is safe.
        """
        plan = self._plan(asks, read, fleet_keys)
        if plan is None:
            return None
        import psycopg  # here: a SQLite-only process (and every CLI start) need not load it

        try:
            connection = self._autocommit_connection()
        except Exception:  # unreachable now: the locked path reports it properly
            return None
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._statement(plan.shape), plan.params)
                found = cursor.fetchone()
        except psycopg.Error as exc:
            if _refused(exc, connection):
                return None
            self._drop_connection()
            raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc
        return self._done(plan, found)

    async def admit_async(self, asks: Sequence[HostAsk]) -> list[Answer] | None:
        """`admit` for an event loop, on an async connection of its own: it never blocks the loop, and saves
        a lone request the two thread hops. Same answers, same Unavailable rule."""
        plan = self._plan(asks)
        if plan is None or self._async_busy:
            return None
        if self._async_connection is None and time.monotonic() < self._async_retry_at:
            return None
        import psycopg

        self._async_busy = True
        try:
            try:
                connection = await self._async_autocommit_connection()
            except Exception:  # the locked path reports it; no new attempt here for a while
                self._async_retry_at = time.monotonic() + RECONNECT_PAUSE_S
                return None
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(self._statement(plan.shape), plan.params)
                    found = await cursor.fetchone()
            except psycopg.Error as exc:
                if _refused(exc, connection):
                    return None
                await self.aclose()
                raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc
        finally:
            self._async_busy = False
        return self._done(plan, found)

    def _statement(self, shape: Shape) -> str:
        statement = self._statements.get(shape)
        if statement is None:
            if len(self._statements) >= _MAX_SHAPES:  # group sizes vary under load: keep the cache small
                self._statements.clear()
            statement = self._statements[shape] = self._build(shape)
        return statement

    def _build(self, shape: Shape) -> str:
        """The statement for one shape of group; parameters in the order `_plan` lists them."""
        keys, holds, logs, placed = shape
        unseen = (
            " AND NOT EXISTS (SELECT 1 FROM reservations"
            f" WHERE host_id = %s AND idempotency_key IN ({', '.join(['%s'] * keys)}))"
            if keys
            else ""
        )
        moved = (
            f"UPDATE hosts SET {', '.join(f'{c} = %s' for c in (*_PEND, *DERIVED_COLUMNS))}, "
            "next_expiry = %s, "
            f"revision = revision + 1 WHERE host_id = %s AND revision = %s{unseen} RETURNING 1"
        )
        ctes = [
            f"moved AS ({moved})",
            f"new_holds AS ({_insert_rows('reservations', HOLD_COLUMNS, self._typed_hold, holds)})",
        ]
        if logs:
            ctes.append(f"new_logs AS ({_insert_rows('allocation_log', LOG_COLUMNS, self._typed_log, logs)})")
        if placed:
            rows = _insert_rows("placements", PLACEMENT_COLUMNS, self._typed_placement, placed)
            ctes.append(f"new_placements AS ({rows})")
        return f"WITH {', '.join(ctes)} SELECT count(*) FROM moved"

    async def _async_autocommit_connection(self) -> Any:
        if self._async_connection is None:
            import psycopg

            engine: Engine = self.db.engine
            _, params = engine.dialect.create_connect_args(engine.url)  # the engine's own settings
            self._async_connection = await psycopg.AsyncConnection.connect(
                **{"connect_timeout": CONNECT_TIMEOUT_S, **params, "autocommit": True}
            )
        return self._async_connection

    def _autocommit_connection(self) -> Any:
        pooled: PoolProxiedConnection | None = getattr(self._local, "connection", None)
        if pooled is None:
            pooled = self.db.engine.raw_connection()
            pooled.detach()  # autocommit is its own setting: it never goes back to the pool
            try:
                pooled.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            except Exception:
                pooled.close()
                raise
            self._local.connection = pooled
            with self._registry:
                self._connections.add(pooled)
        return pooled.dbapi_connection

    def _drop_connection(self) -> None:
        connection: PoolProxiedConnection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._registry:
                self._connections.discard(connection)
            with contextlib.suppress(Exception):  # broken already; a new one is made next time
                connection.close()


def _refused(exc: Exception, connection: Any) -> bool:
    """Whether the server refused the statement, so that it wrote nothing (the connection lives on):
    typically an idempotency key a concurrent caller committed after this statement's snapshot (the unique
    constraint catches it; the locked path then replays that reservation). Otherwise the connection failed
    under the statement, which may have committed or not."""
    return getattr(exc, "sqlstate", None) is not None and not connection.broken


def _insert_rows(table: str, columns: tuple[str, ...], typed_row: str, count: int) -> str:
    """Rows of values for `table`, inserted only when `moved` matched."""
    values = ", ".join([typed_row] * count)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT v.* FROM moved, (VALUES {values}) AS v({', '.join(columns)})"
    )


def _typed_row(table: Table, columns: tuple[str, ...], dialect: Any) -> str:
    """`(%s::TYPE, …)`: VALUES in a subquery has no target columns to infer parameter types from. Lengths
    are dropped so an over-long value still fails on the column instead of being cut by the cast."""
    types = [re.sub(r"\(\d+\)", "", table.c[name].type.compile(dialect=dialect)) for name in columns]
    return f"({', '.join(f'%s::{t}' for t in types)})"
