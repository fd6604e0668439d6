"""A group of holds that fits whole, checked by ONE conditional update of the host's totals.

Most validates ask for what plainly fits. For those, group admission's work (read the locked host row,
decide in Python, write) can shrink to a single `UPDATE hosts SET pend_… = pend_… + <group total> WHERE
<everything fits> RETURNING 1`: a row back means every hold of the group is granted, and its holds and log
rows are inserted; no row means nothing was written and group admission decides exactly, wording any
refusal.
- PostgreSQL: the inserts ride in the same statement as data-modifying CTEs that only produce rows when
  the update matched, sent in autocommit on a connection of its own (an async one for the service's event
  loop, which sends a lone request itself; a sync one on the admission thread): one round trip instead of
  group admission's four (BEGIN, the locked read, the writes, COMMIT). One statement is one transaction; it
  takes the host row's lock, so concurrent callers still serialize on it (a caller that waited for the
  lock has the update's conditions re-checked against the row as committed; an idempotency key committed
  meanwhile is caught by the unique constraint).
- SQLite: inside the caller's `BEGIN IMMEDIATE` transaction, the update then two `executemany`; it saves
  the host read and the Python decision, which dominate a lone request's admission.

The check is the reference's, summed: if the group's total demand of each resource fits what the host has
left, every request fits after its predecessors (amounts are never negative). Anything else — a shortfall,
a capacity change since the limits were cached, a hold due to expire, an idempotency key seen before, a
GPU, a bad TTL, several hosts, a lost connection — makes the update match nothing (or is caught before it
is sent).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Table

from ledger.core.capacity import AllocationRequest
from ledger.core.errors import LedgerError, Unavailable
from ledger.core.resources import ResourceType
from ledger.core.units import MAX_AMOUNT
from ledger.store.admission import Hold, binder, same
from ledger.store.ids import reservation_id
from ledger.store.models import UTCDateTime
from ledger.store.results import HELD, Grant
from ledger.store.totals import ALLOC_COLUMNS, PEND_COLUMN

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection

    from ledger.store.ledger import Ledger


_MAX_SHAPES = 512
CONNECT_TIMEOUT_S = 10
RECONNECT_PAUSE_S = 5.0

# iterating an Enum class is slow for the hot path: once, in the order the update's SET lists the columns
_RESOURCES = tuple(ResourceType)
_PEND = tuple(PEND_COLUMN[r] for r in _RESOURCES)  # the host column each resource's holds pend in

Shape = tuple[int, int, int, tuple[ResourceType, ...]]  # keys, holds, log rows, resources asked for

# The rows this path inserts, in the order `hold_values` and `log_values` give their values. They are
# built as tuples directly (not as `Ledger._hold_row` / `_log_row` dicts through their binders): that was
# half of a group's admission. A test holds both ways equal; `_check_direct_rows` that these name the
# tables' columns.
HOLD_COLUMNS = (
    "reservation_id",
    "host_id",
    "idempotency_key",
    "status",
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "network_download_bps",
    "network_upload_bps",
    "disk_io_bps",
    "gpu",
    "gpu_profile",
    "created_at",
    "expires_at",
    "ended_at",
    "instance_id",
)
LOG_COLUMNS = (
    "host_id",
    "at",
    "entity_kind",
    "entity_id",
    "action",
    "bucket",
    "cause",
    "cpu",
    "memory_bytes",
    "disk_bytes",
    "network_bps",
    "disk_io_bps",
    "gpu",
)


def hold_values(
    rid: str, host_id: str, key: str | None, request: AllocationRequest, created: Any, expires: Any
) -> tuple[Any, ...]:
    """A new hold for a request that wants no GPU, as HOLD_COLUMNS list it; times already bound."""
    return (
        rid,
        host_id,
        key,
        HELD,
        request.vcpus,
        request.memory_bytes,
        request.disk_bytes,
        request.network_download_bps,
        request.network_upload_bps,
        request.disk_io_bps,
        0,
        request.gpu_profile,
        created,
        expires,
        None,
        None,
    )


def log_values(host_id: str, at: Any, rid: str, demands: tuple[int, int, int, int, int]) -> tuple[Any, ...]:
    """The log row of that hold (`demands` in ResourceType's order), as LOG_COLUMNS list it."""
    cpu, memory, disk, network, disk_io = demands
    return (
        host_id,
        at,
        "reservation",
        rid,
        "reserved",
        "pending",
        "api",
        cpu,
        memory,
        disk,
        network,
        disk_io,
        0,
    )


class _Plan(NamedTuple):
    shape: Shape
    update: list[Any]  # the update's parameters
    holds: list[tuple[Any, ...]]  # bound rows
    logs: list[tuple[Any, ...]]
    grants: list[Grant]


class WholeGroupAdmission:
    """Grants a group whole, or answers None (having written nothing) for group admission to decide."""

    def __init__(self, ledger: Ledger, hosts: Table, reservations: Table, allocation_log: Table) -> None:
        self.ledger = ledger
        dialect = ledger.engine.dialect
        self._sqlite = dialect.name == "sqlite"
        self._mark = "?" if self._sqlite else "%s"
        _check_direct_rows(reservations, HOLD_COLUMNS, dialect)
        _check_direct_rows(allocation_log, LOG_COLUMNS, dialect)
        self._bind_time = binder(hosts.c.next_expiry, dialect)  # every time column binds alike (checked)
        if self._sqlite:
            self._insert_hold = _insert_values("reservations", HOLD_COLUMNS)
            self._insert_log = _insert_values("allocation_log", LOG_COLUMNS)
        else:
            self._typed_hold = _typed_row(reservations, HOLD_COLUMNS, dialect)
            self._typed_log = _typed_row(allocation_log, LOG_COLUMNS, dialect)
        self._statements: dict[Shape, str] = {}
        self._connection: PoolProxiedConnection | None = None  # PostgreSQL: its own, in autocommit
        self._async_connection: Any = None  # likewise, for `try_admit_async` on an event loop
        self._async_busy = False
        self._async_retry_at = 0.0  # after a failed connect, the loop path waits this long (monotonic)
        self._in_use = threading.Lock()
        self.granted_groups = 0  # how many groups this path settled (tests check it carries the load)

    def close(self) -> None:
        with self._in_use:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        connection, self._async_connection = self._async_connection, None
        if connection is not None:  # `aclose` was not awaited: close its socket without a loop
            connection.pgconn.finish()

    # ---- SQLite ---------------------------------------------------------------------------------

    def try_admit_in(self, cursor: Any, holds: Sequence[Hold]) -> list[Grant] | None:
        """SQLite, inside the caller's write transaction: every hold granted and written, or None."""
        plan = self._plan(holds)
        if plan is None:
            return None
        cursor.execute(self._statement(plan.shape), plan.update)
        if cursor.fetchone() is None:
            return None
        cursor.executemany(self._insert_hold, plan.holds)
        if plan.logs:
            cursor.executemany(self._insert_log, plan.logs)
        self.granted_groups += 1
        return plan.grants

    # ---- PostgreSQL -----------------------------------------------------------------------------

    def try_admit(self, holds: Sequence[Hold]) -> list[Grant] | None:
        """PostgreSQL, one autocommit statement: every hold granted and written, or None (nothing written).

        Raises Unavailable when the connection fails under the statement: it may have committed or not, and
        deciding again elsewhere could hold twice. The caller answers `unavailable`, as group admission does
        for a lost connection; a retry with the same idempotency key is safe.
        """
        plan = self._plan(holds)
        if plan is None or not self._in_use.acquire(blocking=False):
            return None
        try:
            return self._run(plan)
        finally:
            self._in_use.release()

    def _run(self, plan: _Plan) -> list[Grant] | None:
        import psycopg  # here, not at the top: a SQLite-only process (and every CLI start) need not load it

        try:
            connection = self._autocommit_connection()
        except Exception:  # the database is unreachable now: group admission reports it properly
            return None
        try:
            with connection.cursor() as cursor:
                cursor.execute(self._statement(plan.shape), self._params(plan))
                found = cursor.fetchone()
        except psycopg.Error as exc:
            if self._refused(exc, connection):
                return None
            self._drop_connection()
            raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc
        return self._granted(plan, found)

    async def try_admit_async(self, holds: Sequence[Hold]) -> list[Grant] | None:
        """`try_admit` for an event loop, on an async connection of its own: it never blocks the loop, and
        saves a lone request the two thread hops. Same answers, same Unavailable rule."""
        plan = self._plan(holds)
        if plan is None or self._async_busy:
            return None
        import psycopg

        if self._async_connection is None and time.monotonic() < self._async_retry_at:
            return None
        self._async_busy = True
        try:
            try:
                connection = await self._async_autocommit_connection()
            except Exception:  # group admission reports it; no new attempt here for a while
                self._async_retry_at = time.monotonic() + RECONNECT_PAUSE_S
                return None
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(self._statement(plan.shape), self._params(plan))
                    found = await cursor.fetchone()
            except psycopg.Error as exc:
                if self._refused(exc, connection):
                    return None
                await self.aclose()
                raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc
        finally:
            self._async_busy = False
        return self._granted(plan, found)

    async def aclose(self) -> None:
        connection, self._async_connection = self._async_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    @staticmethod
    def _params(plan: _Plan) -> list[Any]:
        return plan.update + [v for row in plan.holds for v in row] + [v for row in plan.logs for v in row]

    @staticmethod
    def _refused(exc: Exception, connection: Any) -> bool:
        """Whether the server refused the statement, so that it wrote nothing (the connection lives on):
        typically an idempotency key a concurrent caller committed after this statement's snapshot (the
        unique constraint catches it; group admission then replays that reservation). Otherwise the
        connection failed under the statement, which may have committed or not."""
        return getattr(exc, "sqlstate", None) is not None and not connection.broken

    def _granted(self, plan: _Plan, found: Any) -> list[Grant] | None:
        if found is None or found[0] != 1:
            return None
        self.granted_groups += 1
        return plan.grants

    async def _async_autocommit_connection(self) -> Any:
        if self._async_connection is None:
            import psycopg

            engine = self.ledger.engine
            _, params = engine.dialect.create_connect_args(engine.url)  # the engine's own settings
            self._async_connection = await psycopg.AsyncConnection.connect(
                **{"connect_timeout": CONNECT_TIMEOUT_S, **params, "autocommit": True}
            )
        return self._async_connection

    def _autocommit_connection(self) -> Any:
        if self._connection is None:
            pooled = self.ledger.engine.raw_connection()
            pooled.detach()  # autocommit is its own setting: it never goes back to the pool
            try:
                pooled.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            except Exception:
                pooled.close()
                raise
            self._connection = pooled
        return self._connection.dbapi_connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # broken already; a new one is made next time
                connection.close()

    # ---- both -----------------------------------------------------------------------------------

    def _plan(self, holds: Sequence[Hold]) -> _Plan | None:
        """The update's parameters, the rows and the grants, when the group qualifies."""
        ledger = self.ledger
        host_id = holds[0][0]
        cached = ledger.cached_capacities(host_id)
        if cached is None:
            return None
        version, capacity_rows = cached
        now = ledger.clock()  # one transaction: every row of the group is written at the same time
        created = self._bind_time(now)
        expiry: dict[float, tuple[datetime, Any]] = {}  # per TTL: when its holds expire, and that bound
        keys: set[str] = set()
        rows, logs, grants, asked = [], [], [], []
        try:
            for hold_host, request, key, asked_ttl in holds:
                if hold_host != host_id or request.wants_gpu or (key is not None and key in keys):
                    return None
                ttl = ledger._hold_ttl(asked_ttl, key)
                if key is not None:
                    keys.add(key)
                expires = expiry.get(ttl)
                if expires is None:
                    at = now + timedelta(seconds=ttl)
                    expires = expiry[ttl] = (at, self._bind_time(at))
                rid = reservation_id()
                rows.append(hold_values(rid, host_id, key, request, created, expires[1]))
                demands = request.demands()
                if any(demands):
                    asked.append(demands)
                    logs.append(log_values(host_id, created, rid, demands))
                grants.append(Grant(rid, host_id, HELD, expires[0], key))
        except LedgerError:
            return None  # a bad TTL or key: group admission words the refusal
        totals = [sum(amounts) for amounts in zip(*asked, strict=True)] if asked else [0] * len(_RESOURCES)
        if max(totals) > MAX_AMOUNT:
            return None
        earliest = min(expiry.values())[1]
        update: list[Any] = [*totals, earliest, earliest, host_id, version, created]
        wanted = []
        for resource, total in zip(_RESOURCES, totals, strict=True):
            if total:
                wanted.append(resource)
                capacity = capacity_rows.get(resource.value)
                update += [capacity.effective_limit if capacity is not None else 0, total]
        if keys:
            update += [host_id, *sorted(keys)]
        return _Plan((len(keys), len(rows), len(logs), tuple(wanted)), update, rows, logs, grants)

    def _statement(self, shape: Shape) -> str:
        statement = self._statements.get(shape)
        if statement is None:
            if len(self._statements) >= _MAX_SHAPES:  # group sizes vary under load: keep the text cache small
                self._statements.clear()
            statement = self._statements[shape] = self._build(shape)
        return statement

    def _build(self, shape: Shape) -> str:
        """The statement for one shape of group; parameters in the order `_plan` lists them."""
        keys, holds, logs, wanted = shape
        mark = self._mark
        move = ", ".join(f"{c} = {c} + {mark}" for c in _PEND)
        fits = "".join(
            f" AND {mark} - {' - '.join((*ALLOC_COLUMNS[r], PEND_COLUMN[r]))} >= {mark}" for r in wanted
        )
        unseen = (
            " AND NOT EXISTS (SELECT 1 FROM reservations"
            f" WHERE host_id = {mark} AND idempotency_key IN ({', '.join([mark] * keys)}))"
            if keys
            else ""
        )
        update = (
            f"UPDATE hosts SET {move}, next_expiry = CASE WHEN next_expiry IS NULL OR next_expiry > {mark} "
            f"THEN {mark} ELSE next_expiry END WHERE host_id = {mark} AND capacity_version = {mark} "
            f"AND (next_expiry IS NULL OR next_expiry > {mark}){fits}{unseen} RETURNING 1"
        )
        if self._sqlite:
            return update
        ctes = [
            f"moved AS ({update})",
            f"new_holds AS ({_insert_rows('reservations', HOLD_COLUMNS, self._typed_hold, holds)})",
        ]
        if logs:
            ctes.append(f"new_logs AS ({_insert_rows('allocation_log', LOG_COLUMNS, self._typed_log, logs)})")
        return f"WITH {', '.join(ctes)} SELECT count(*) FROM moved"


def _check_direct_rows(table: Table, columns: tuple[str, ...], dialect: Any) -> None:
    """`columns` must be all of `table`'s but its generated id, and only its UTC times may need binding
    (`_plan` binds those with one binder and leaves every other value as it is)."""
    names = {c.name for c in table.c} - {"id"}
    if set(columns) != names or len(columns) != len(names):
        raise RuntimeError(f"whole_group's columns for {table.name} are not the model's: {sorted(names)}")
    for name in columns:
        column = table.c[name]
        if not isinstance(column.type, UTCDateTime) and binder(column, dialect) is not same:
            raise RuntimeError(f"whole_group writes {table.name}.{name} unbound, but its type binds values")


def _insert_values(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['?'] * len(columns))})"


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
