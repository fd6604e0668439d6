"""Group admission (`Ledger.reserve_many`, ledger/store/admission.py) must decide exactly what `reserve`
called once per request decides: the same grants and refusals with the same messages, the same totals,
the same rows, no drift. Checked on both engines with random groups, then the lock behaviour of
`try_reserve_many`."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.core.capacity import AllocationRequest
from ledger.core.errors import LedgerError, Unavailable
from ledger.core.gpu import GPUProfile, GPUStatus
from ledger.core.resources import ResourceType
from ledger.store.admission import Hold, binder
from ledger.store.ledger import Ledger, allocation_log, reservations
from ledger.store.results import Grant
from tests.conftest import capacities

GIB = 2**30
RATIOS = {ResourceType.CPU: 2.0, ResourceType.MEMORY: 1.0}
GPU = GPUStatus(
    mode="vgpu",
    total_slots=2,
    used_slots=0,
    profiles=(GPUProfile(name="A16-4Q", type_id="nvidia-1", framebuffer_mb=4096, available=2),),
)


FAST_GROUPS: list[int] = []  # per example: host groups the group path decided (not the reference)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 5),
    memory_bytes=st.sampled_from([0, GIB // 2, GIB, 3 * GIB]),
    disk_bytes=st.sampled_from([0, 10**9, 200 * 10**9]),
    network_download_bps=st.sampled_from([0, 10**6, 400 * 10**6]),
    network_upload_bps=st.sampled_from([0, 10**6]),
    disk_io_bps=st.sampled_from([0, 10**8]),
    # GPU requests are rare (a group with one goes the reference way)
    needs_gpu=st.sampled_from([False] * 29 + [True]),
    gpu_profile=st.sampled_from([None] * 38 + ["A16-4Q", "no-such-profile"]),
)
holds = st.tuples(
    st.sampled_from(["main"] * 8 + ["other", "missing"]),  # host (one never registered)
    requests,
    st.sampled_from([None, None, "k1", "k2", "k3"]),  # keys repeat: replays and conflicts
    st.sampled_from([None, None, 30.0, 90, 0, 10**9]),  # ttl; 0 and 10**9 are invalid
)
rounds = st.lists(st.tuples(st.integers(0, 45), st.lists(holds, min_size=1, max_size=12)), max_size=8)


def _ledgers(db_url: str, clock: Clock) -> tuple[Ledger, Ledger, dict[str, str], dict[str, str]]:
    """Two ledgers on the database, each with its own host names, registered identically."""
    names = []
    for _ in range(2):
        run = uuid.uuid4().hex[:8]
        names.append({h: f"{h}-{run}" for h in ("main", "other", "missing")})
    opened = []
    for hosts in names:
        ledger = Ledger.open(db_url, migrate=False, clock=clock, reservation_ttl=60)
        ledger.register_host(hosts["main"], capacities(cpu=8, memory=8 * GIB, network=10**9), RATIOS, GPU)
        ledger.register_host(hosts["other"], capacities(cpu=2, memory=2 * GIB), {})
        opened.append(ledger)
    return opened[0], opened[1], names[0], names[1]


def _shape(outcome: Grant | LedgerError, hosts: dict[str, str]) -> tuple[Any, ...]:
    """An outcome with everything that legitimately differs (ids, host names) taken out."""

    def plain(text: str) -> str:
        for generic, real in hosts.items():
            text = text.replace(real, generic)
        return text

    if isinstance(outcome, Grant):
        return (
            "grant",
            plain(outcome.host_id),
            outcome.status,
            outcome.expires_at,
            outcome.idempotency_key,
            outcome.replayed,
        )
    details = {k: plain(v) if isinstance(v, str) else v for k, v in outcome.details.items()}
    details.pop("reservation_id", None)  # a conflict names the earlier reservation's id
    return (
        type(outcome).__name__,
        plain(outcome.message).split(" (reservation ")[0],
        sorted(details.items()),
    )


def _one_by_one(ledger: Ledger, group: list[Hold]) -> list[Grant | LedgerError]:
    outcomes: list[Grant | LedgerError] = []
    for host, request, key, ttl in group:
        try:
            outcomes.append(ledger.reserve(host, request, idempotency_key=key, ttl=ttl))
        except LedgerError as exc:
            outcomes.append(exc)
    return outcomes


def _rows(ledger: Ledger, host: str) -> list[tuple[Any, ...]]:
    with ledger.engine.connect() as conn:
        holds = conn.execute(select(reservations).where(reservations.c.host_id == host)).mappings().all()
        logs = (
            conn.execute(
                select(allocation_log).where(allocation_log.c.host_id == host).order_by(allocation_log.c.id)
            )
            .mappings()
            .all()
        )
    # holds made in one round share created_at, and a sweep logs expiries in whatever order the database
    # returns them: compare as multisets
    shaped = sorted(
        (tuple(v for k, v in r.items() if k not in {"reservation_id", "host_id"}) for r in holds), key=repr
    )
    shaped += sorted(
        (tuple(v for k, v in r.items() if k not in {"id", "host_id", "entity_id"}) for r in logs), key=repr
    )
    return shaped


def _compare_with_one_by_one(db_url: str, rounds: list[Any]) -> tuple[int, int]:
    """Run `rounds` through group admission exactly as the service calls it and through `reserve` one by
    one on a twin ledger; assert the same outcomes, totals and rows. Returns (host groups the group path
    decided, groups the whole-group path granted)."""
    clock = Clock()
    grouped, single, grouped_hosts, single_hosts = _ledgers(db_url, clock)
    decided = [0]
    write = grouped._admission._write

    def counted(*args: Any) -> None:
        decided[0] += 1
        write(*args)

    grouped._admission._write = counted  # type: ignore[method-assign]
    try:
        for advance, group in rounds:
            clock.now += timedelta(seconds=advance)  # holds of 30 s expire between rounds: sweeps happen
            mine = [(grouped_hosts[h], r, k, t) for h, r, k, t in group]
            got = grouped.try_reserve_many(mine) or grouped.reserve_many(mine)  # as the service does
            want = _one_by_one(single, [(single_hosts[h], r, k, t) for h, r, k, t in group])
            assert [_shape(o, grouped_hosts) for o in got] == [_shape(o, single_hosts) for o in want]
            for name in ("main", "other"):
                mine, reference = (
                    grouped.full_status(grouped_hosts[name]),
                    single.full_status(single_hosts[name]),
                )
                assert mine.resources == reference.resources
                assert mine.gpu == reference.gpu
        for name in ("main", "other"):
            assert _rows(grouped, grouped_hosts[name]) == _rows(single, single_hosts[name])
        assert grouped.drift() == []
        return decided[0], grouped._whole_group.granted_groups
    finally:
        grouped.close()
        single.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=rounds)
def test_group_admission_decides_exactly_as_one_by_one(db_url: str, rounds: list[Any]) -> None:
    decided, whole = _compare_with_one_by_one(db_url, rounds)
    FAST_GROUPS.append(decided + whole)


# What a service for one host sends: every hold for "main", most of them plain, so that whole groups go
# the whole-group way, until the host fills up and they fall back.
small_requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 2),
    memory_bytes=st.sampled_from([0, GIB // 4, GIB // 2]),
    disk_bytes=st.sampled_from([0, 10**9]),
    network_download_bps=st.sampled_from([0, 10**6, 400 * 10**6]),
    disk_io_bps=st.sampled_from([0, 10**8]),
    needs_gpu=st.sampled_from([False] * 49 + [True]),
)
one_host_holds = st.tuples(
    st.just("main"),
    small_requests,
    st.sampled_from([None, None, None, "k1"]) | st.uuids().map(lambda u: u.hex),  # keys rarely repeat
    st.sampled_from([None] * 6 + [30.0, 90, 0]),
)
one_host_rounds = st.lists(
    st.tuples(st.sampled_from([0, 0, 1, 5, 61]), st.lists(one_host_holds, min_size=1, max_size=6)),
    min_size=6,
    max_size=10,
)
WHOLE_GROUPS: dict[str, list[int]] = {"sqlite": [], "postgresql": []}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=one_host_rounds)
def test_whole_group_admission_decides_exactly_as_one_by_one(db_url: str, rounds: list[Any]) -> None:
    _, granted = _compare_with_one_by_one(db_url, rounds)
    WHOLE_GROUPS["sqlite" if db_url.startswith("sqlite") else "postgresql"].append(granted)


def test_the_property_test_exercised_the_group_path() -> None:
    """Runs after the property test (same module, file order): it must not have gone the reference way
    for every group, or it compared the reference with itself."""
    if not FAST_GROUPS:
        pytest.skip("the property test did not run in this session")
    assert sum(FAST_GROUPS) > len(FAST_GROUPS), FAST_GROUPS


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_whole_group_test_exercised_that_path(engine: str) -> None:
    """Likewise: the whole-group path must have granted groups on each engine (and left others to group
    admission, which the equality above then covered too)."""
    granted = WHOLE_GROUPS[engine]
    if not granted:
        pytest.skip("the whole-group property test did not run on this engine in this session")
    assert sum(granted) >= len(granted), granted


def test_try_reserve_many_returns_none_at_once_while_another_process_writes(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"try-{uuid.uuid4().hex[:8]}"
    ledger.register_host(host, capacities(), {})
    hold: Hold = (host, AllocationRequest(vcpus=1), None, None)
    assert ledger.try_reserve_many([hold]) is None  # capacities not cached yet: that takes SQLAlchemy
    ledger.reserve_many([hold])  # ... which the waiting path has
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # what another process's write transaction looks like
        started = datetime.now(UTC)
        assert ledger.try_reserve_many([hold]) is None
        assert datetime.now(UTC) - started < timedelta(seconds=1)  # did not sit in SQLite's busy handler
        other.execute("ROLLBACK")
        outcome = ledger.try_reserve_many([hold])
        assert outcome is not None and isinstance(outcome[0], Grant)
        assert ledger.status(host, ResourceType.CPU).pending == 2
        assert ledger.drift() == []
    finally:
        other.close()
        ledger.close()


def test_try_reserve_many_returns_none_while_this_process_writes(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"try-{uuid.uuid4().hex[:8]}"
    ledger.register_host(host, capacities(), {})
    try:
        with ledger.batch():  # the event consumer's transaction, say
            assert ledger.try_reserve_many([(host, AllocationRequest(vcpus=1), None, None)]) is None
    finally:
        ledger.close()


def test_try_reserve_many_is_not_for_postgresql(pg_url: str) -> None:
    """Every PostgreSQL statement waits on the network: none of them runs on the event loop."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, AllocationRequest(vcpus=1), None, None)]
    try:
        ledger.register_host(host, capacities(cpu=2, memory=GIB), {})
        ledger.reserve_many(lone)  # capacities cached: the whole-group path could take the next one
        assert ledger.try_reserve_many(lone) is None
    finally:
        ledger.close()


@pytest.mark.parametrize("size", [1, 64])
def test_a_group_that_fails_midway_writes_nothing(sqlite_url: str, size: int) -> None:
    """A database error in the group's writes rolls back every hold of the group."""
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"fail-{uuid.uuid4().hex[:8]}"
    ledger.register_host(host, capacities(cpu=1000), {})
    ledger._admission._move_totals = "UPDATE no_such_table SET x = 1"
    try:
        with pytest.raises(Exception, match="no_such_table"):
            ledger.reserve_many([(host, AllocationRequest(vcpus=1), None, None)] * size)
        assert ledger.status(host, ResourceType.CPU).pending == 0
        with ledger.engine.connect() as conn:
            assert conn.execute(select(reservations).where(reservations.c.host_id == host)).first() is None
    finally:
        ledger.close()


@pytest.mark.parametrize("call", ["try_reserve_many", "reserve_many"])
def test_a_whole_group_that_fails_after_its_update_writes_nothing(sqlite_url: str, call: str) -> None:
    """SQLite: the whole-group update matched, then an insert failed: the totals it moved roll back too."""
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"fail-{uuid.uuid4().hex[:8]}"
    group = [(host, AllocationRequest(vcpus=1), None, None)] * 3
    ledger.register_host(host, capacities(cpu=1000), {})
    try:
        ledger.reserve_many(group[:1])  # group admission loads the capacities
        ledger._whole_group._insert_log = "INSERT INTO no_such_table VALUES (?)"
        with pytest.raises(Exception, match="no_such_table"):
            getattr(ledger, call)(group)
        assert ledger._whole_group.granted_groups == 0
        assert ledger.status(host, ResourceType.CPU).pending == 1
        with ledger.engine.connect() as conn:
            assert len(conn.execute(select(reservations).where(reservations.c.host_id == host)).all()) == 1
        assert ledger.drift() == []
    finally:
        ledger.close()


@settings(max_examples=300)
@given(
    value=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_sqlite_time_binder_writes_what_sqlalchemy_writes(value: datetime) -> None:
    """Group admission binds UTC times on SQLite with its own faster function: it must write the very text
    the column type would (expiry checks compare that text)."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    fast = binder(reservations.c.expires_at, dialect)
    reference = reservations.c.expires_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert reference is not None and fast is not reference
    assert fast(value) == reference(value)


def test_whole_group_path_answers_unavailable_for_a_killed_connection_then_reconnects(pg_url: str) -> None:
    """The whole-group path's own connection dies (server restart, admin kill). Whether its statement
    committed is unknown, so the group is answered `unavailable` (deciding it again could hold twice); the
    next group reconnects. Nothing is counted twice."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, AllocationRequest(vcpus=1), None, None)]
    whole_group = ledger._whole_group
    try:
        ledger.register_host(host, capacities(cpu=8, memory=GIB), {})
        ledger.reserve_many(lone)  # group admission loads the capacities
        ledger.reserve_many(lone)
        assert whole_group.granted_groups == 1
        connection = whole_group._connection
        assert connection is not None
        pid = connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with ledger.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(Unavailable):
            ledger.reserve_many(lone)
        ledger.reserve_many(lone)
        assert whole_group.granted_groups == 2  # a new connection
        assert ledger.status(host, ResourceType.CPU).pending == 3
        assert ledger.drift() == []
    finally:
        ledger.close()


def test_a_key_another_replica_commits_meanwhile_is_replayed_not_held_twice(pg_url: str) -> None:
    """Replica B holds the host row while it reserves under key k; replica A's whole-group statement for
    the same key waits for the row, and its NOT EXISTS was read before B committed. The unique constraint
    stops A's insert; A falls back to group admission, which replays B's reservation."""
    replica_a = Ledger.open(pg_url, migrate=False)
    replica_b = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    request = AllocationRequest(vcpus=1)
    try:
        replica_a.register_host(host, capacities(cpu=8, memory=GIB), {})
        replica_a.reserve_many([(host, request, None, None)])  # capacities cached in A
        outcome: list[Any] = []
        with replica_b.batch():
            earlier = replica_b.reserve(host, request, idempotency_key="k")
            waiting = threading.Thread(
                target=lambda: outcome.extend(replica_a.reserve_many([(host, request, "k", None)]))
            )
            waiting.start()
            time.sleep(0.5)  # A is now blocked on the host row B holds
            assert waiting.is_alive()
        waiting.join(timeout=30)
        assert isinstance(outcome[0], Grant) and outcome[0].replayed
        assert outcome[0].reservation_id == earlier.reservation_id
        assert replica_a._whole_group.granted_groups == 0
        assert replica_a.status(host, ResourceType.CPU).pending == 2
        assert replica_a.drift() == []
    finally:
        replica_a.close()
        replica_b.close()


async def test_the_event_loop_path_on_postgresql(pg_url: str) -> None:
    """`try_reserve_many_async`: a lone request that fits is granted on the async connection; one that does
    not fit, or a group, is None (nothing written); a killed connection is `unavailable`, then reconnects."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, AllocationRequest(vcpus=1), None, None)]
    try:
        ledger.register_host(host, capacities(cpu=2, memory=GIB), {})
        assert await ledger.try_reserve_many_async(lone) == (None, True)  # capacities not cached yet
        ledger.reserve_many(lone)
        granted, checked = await ledger.try_reserve_many_async(lone)
        assert checked and granted is not None and isinstance(granted[0], Grant)
        assert await ledger.try_reserve_many_async(lone * 2) == (None, False)  # a group: the thread's
        assert await ledger.try_reserve_many_async([(host, AllocationRequest(vcpus=50), None, None)]) == (
            None,
            True,
        )
        too_big = [(host, AllocationRequest(vcpus=50), None, None)]

        def not_again(_: Any) -> None:
            raise AssertionError("the whole-group check was made twice")

        ledger._whole_group.try_admit = not_again  # type: ignore[assignment,method-assign]
        refused = ledger.reserve_many(too_big, whole_group=False)  # as the service does after the loop
        assert type(refused[0]).__name__ == "InsufficientResources"
        pid = ledger._whole_group._async_connection.info.backend_pid
        with ledger.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(Unavailable):
            await ledger.try_reserve_many_async(lone)
        assert (await ledger.try_reserve_many_async(lone))[0] is not None
        assert ledger._whole_group.granted_groups == 2
        assert ledger.status(host, ResourceType.CPU).pending == 3
        assert ledger.drift() == []
    finally:
        await ledger.aclose()
        ledger.close()


def test_try_reserve_many_async_is_not_for_sqlite(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    lone = [("any", AllocationRequest(vcpus=1), None, None)]
    try:
        assert asyncio.run(ledger.try_reserve_many_async(lone)) == (None, False)
    finally:
        ledger.close()
