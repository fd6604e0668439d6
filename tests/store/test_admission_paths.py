"""Admitting a group (`Ledger.reserve_many`, as the service calls it) must decide exactly what `reserve`
called once per request decides: the same grants and refusals with the same messages, the same totals,
the same rows, no drift. Checked on both engines with random groups; then where a group runs (SQLite on
the event loop when the lock is free; PostgreSQL's one-round-trip strategy) and what happens when that
goes wrong."""

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

from ledger.core.charges import AllocationRequest, Ask
from ledger.core.errors import LedgerError, Unavailable
from ledger.core.gpu import GPUProfile, GPUStatus
from ledger.core.resources import ResourceType
from ledger.core.results import Grant
from ledger.store.ledger import HostAsk, Ledger
from ledger.store.sql import allocation_log, binder, reservations
from tests.conftest import capacities

GIB = 2**30
RATIOS = {ResourceType.CPU: 2.0, ResourceType.MEMORY: 1.0}
GPU = GPUStatus(
    mode="vgpu",
    total_slots=2,
    used_slots=0,
    profiles=(GPUProfile(name="A16-4Q", type_id="nvidia-1", framebuffer_mb=4096, available=2),),
)


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
    network_download_bps=st.sampled_from([None, 0, 10**6, 400 * 10**6]),  # None: charged the default
    network_upload_bps=st.sampled_from([None, 0, 10**6]),
    disk_io_bps=st.sampled_from([None, 0, 10**8]),
    needs_gpu=st.sampled_from([False] * 9 + [True]),
    gpu_profile=st.sampled_from([None] * 18 + ["A16-4Q", "no-such-profile"]),
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


def _asks(hosts: dict[str, str], group: list[Any]) -> list[HostAsk]:
    return [(hosts[h], Ask(r, k, t)) for h, r, k, t in group]


def _one_by_one(ledger: Ledger, asks: list[HostAsk]) -> list[Grant | LedgerError]:
    outcomes: list[Grant | LedgerError] = []
    for host, ask in asks:
        try:
            outcomes.append(ledger.reserve(host, ask.request, idempotency_key=ask.key, ttl=ask.ttl))
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


def _compare_with_one_by_one(db_url: str, rounds: list[Any]) -> None:
    """Run `rounds` through `reserve_many` exactly as the service calls it and through `reserve` one by one
    on a twin ledger; assert the same outcomes, totals and rows."""
    clock = Clock()
    grouped, single, grouped_hosts, single_hosts = _ledgers(db_url, clock)
    try:
        for advance, group in rounds:
            clock.now += timedelta(seconds=advance)  # holds of 30 s expire between rounds: sweeps happen
            mine = _asks(grouped_hosts, group)
            got = grouped.try_reserve_many(mine) or grouped.reserve_many(mine)  # as the service does
            want = _one_by_one(single, _asks(single_hosts, group))
            assert [_shape(o, grouped_hosts) for o in got] == [_shape(o, single_hosts) for o in want]
            for name in ("main", "other"):
                mine_status = grouped.full_status(grouped_hosts[name])
                reference = single.full_status(single_hosts[name])
                assert mine_status.resources == reference.resources
                assert mine_status.gpu == reference.gpu
        for name in ("main", "other"):
            assert _rows(grouped, grouped_hosts[name]) == _rows(single, single_hosts[name])
        assert grouped.drift() == []
    finally:
        grouped.close()
        single.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=rounds)
def test_a_group_decides_exactly_as_one_by_one(db_url: str, rounds: list[Any]) -> None:
    _compare_with_one_by_one(db_url, rounds)


def test_postgresql_grants_a_plain_group_in_one_round_trip(pg_url: str) -> None:
    """The one-round-trip strategy carries what it should: once this process has read the host (registering
    it did), groups that grant are written by it, with the answers the locked path would give; keys used
    before make it write nothing, and the locked path replays them."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        ledger.register_host(host, capacities(cpu=3, memory=8 * GIB), {ResourceType.CPU: 1.0})
        group = [(host, Ask(AllocationRequest(vcpus=1), key, None)) for key in ("a", "b", None)]
        assert all(isinstance(o, Grant) for o in ledger.reserve_many(group[:1]))
        assert ledger.optimistic is not None and ledger.optimistic.admitted_groups == 1
        second = ledger.reserve_many(group[1:])
        assert all(isinstance(o, Grant) for o in second)
        assert ledger.optimistic.admitted_groups == 2
        again = ledger.reserve_many(group)  # keys seen before: the locked path replays them
        assert [type(o).__name__ for o in again] == ["Grant", "Grant", "InsufficientResources"]
        assert [o.replayed for o in again[:2] if isinstance(o, Grant)] == [True, True]
        assert ledger.optimistic.admitted_groups == 2
        assert ledger.status(host, ResourceType.CPU).pending == 3
        assert ledger.drift() == []
    finally:
        ledger.close()


def test_place_holds_in_one_statement_on_what_its_search_read(pg_url: str) -> None:
    """`place` decides on the host row its search just read and writes the hold, its history and its
    fleet-wide key in one statement; a retry with the key finds that placement. When another process
    (replica) wrote the host after the search read it, the statement writes nothing and the locked path
    holds instead: nothing is held twice."""
    writer = Ledger.open(pg_url, migrate=False)
    other = Ledger.open(pg_url, migrate=False)  # another replica: its own committed view of the host
    host = f"pl-{uuid.uuid4().hex[:8]}"
    try:
        writer.register_host(
            host, capacities(cpu=4, memory=8 * GIB), {ResourceType.CPU: 1.0}, labels={"z": host}
        )
        placer = Ledger.open(pg_url, migrate=False)  # has never written the host: only its search read it
        try:
            assert placer.optimistic is not None
            key = f"k-{host}"
            first = placer.place(Ask(AllocationRequest(vcpus=1), key, None), labels={"z": host})
            assert first.host_id == host and placer.optimistic.admitted_groups == 1
            again = placer.place(Ask(AllocationRequest(vcpus=1), key, None), labels={"z": host})
            assert again.reservation_id == first.reservation_id and again.replayed
            assert placer.optimistic.admitted_groups == 1
            # the search reads revision n, then another replica writes the host: the statement finds n+1
            search = placer.fleet.best

            def stale_search(*args: Any, **kwargs: Any) -> Any:
                found = search(*args, **kwargs)
                other.reserve(host, AllocationRequest(vcpus=1))
                return found

            placer.fleet.best = stale_search  # type: ignore[method-assign]
            third = placer.place(Ask(AllocationRequest(vcpus=1), f"k2-{host}", None), labels={"z": host})
            assert third.host_id == host and placer.optimistic.admitted_groups == 1  # the locked path
            assert writer.status(host, ResourceType.CPU).pending == 3
            assert writer.reservation_by_key(host, f"k2-{host}").reservation_id == third.reservation_id
            assert writer.drift() == []
        finally:
            placer.close()
    finally:
        other.close()
        writer.close()


def test_try_reserve_many_returns_none_at_once_while_another_process_writes(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"try-{uuid.uuid4().hex[:8]}"
    ledger.register_host(host, capacities(), {})
    hold: HostAsk = (host, Ask(AllocationRequest(vcpus=1)))
    granted = ledger.try_reserve_many([hold])  # the lock is free: decided and written right here
    assert granted is not None and isinstance(granted[0], Grant)
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
            assert ledger.try_reserve_many([(host, Ask(AllocationRequest(vcpus=1)))]) is None
    finally:
        ledger.close()


def test_try_reserve_many_is_not_for_postgresql(pg_url: str) -> None:
    """Every PostgreSQL statement waits on the network: none of them runs on the event loop."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, Ask(AllocationRequest(vcpus=1)))]
    try:
        ledger.register_host(host, capacities(cpu=2, memory=GIB), {})
        ledger.reserve_many(lone)
        assert ledger.try_reserve_many(lone) is None
    finally:
        ledger.close()


@pytest.mark.parametrize("size", [1, 64])
@pytest.mark.parametrize("where", ["try_reserve_many", "reserve_many"])
def test_a_group_that_fails_midway_writes_nothing(sqlite_url: str, size: int, where: str) -> None:
    """A database error in the group's last write rolls back every hold of the group."""
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"fail-{uuid.uuid4().hex[:8]}"
    ledger.register_host(host, capacities(cpu=1000), {})
    ledger.db.statements.write_moved = lambda totals: "UPDATE no_such_table SET x = 1"  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="no_such_table"):
            getattr(ledger, where)([(host, Ask(AllocationRequest(vcpus=1)))] * size)
        with ledger.engine.connect() as conn:
            assert conn.execute(select(reservations).where(reservations.c.host_id == host)).first() is None
            assert (
                conn.execute(select(allocation_log).where(allocation_log.c.host_id == host)).first() is None
            )
    finally:
        ledger.close()


@settings(max_examples=300)
@given(
    value=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_sqlite_time_binder_writes_what_sqlalchemy_writes(value: datetime) -> None:
    """The hot statements bind UTC times on SQLite with their own faster function: it must write the very
    text the column type would (expiry checks compare that text)."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    fast = binder(reservations.c.expires_at, dialect)
    reference = reservations.c.expires_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert reference is not None and fast is not reference
    assert fast(value) == reference(value)


def test_the_one_round_trip_path_answers_unavailable_for_a_killed_connection_then_reconnects(
    pg_url: str,
) -> None:
    """The strategy's own connection dies (server restart, admin kill). Whether its statement committed is
    unknown, so the group is answered `unavailable` (deciding it again could hold twice); the next group
    reconnects. Nothing is counted twice."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, Ask(AllocationRequest(vcpus=1)))]
    strategy = ledger.optimistic
    assert strategy is not None
    try:
        ledger.register_host(host, capacities(cpu=8, memory=GIB), {})
        ledger.reserve_many(lone)
        assert strategy.admitted_groups == 1
        connection = strategy._local.connection  # this thread's
        assert connection is not None
        pid = connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with ledger.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(Unavailable):
            ledger.reserve_many(lone)
        # Had the lost statement committed, the host's revision would have moved and this would take the
        # locked path; it was never sent, so the strategy writes it, on a new connection.
        ledger.reserve_many(lone)
        assert strategy.admitted_groups == 2
        assert ledger.status(host, ResourceType.CPU).pending == 2
        assert ledger.drift() == []
    finally:
        ledger.close()


def test_a_key_another_replica_commits_meanwhile_is_replayed_not_held_twice(pg_url: str) -> None:
    """Replica B holds the host row while it reserves under key k; replica A's one-round-trip statement
    for the same key waits for the row. When B commits, the row's revision has moved, so A's statement
    writes nothing; A takes the locked path, which replays B's reservation."""
    replica_a = Ledger.open(pg_url, migrate=False)
    replica_b = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    request = AllocationRequest(vcpus=1)
    try:
        replica_a.register_host(host, capacities(cpu=8, memory=GIB), {})  # A has read the host
        replica_a.reserve_many([(host, Ask(request))])
        admitted = replica_a.optimistic.admitted_groups if replica_a.optimistic else 0
        assert admitted == 1
        outcome: list[Any] = []
        with replica_b.batch():
            earlier = replica_b.reserve(host, request, idempotency_key="k")
            waiting = threading.Thread(
                target=lambda: outcome.extend(replica_a.reserve_many([(host, Ask(request, "k"))]))
            )
            waiting.start()
            time.sleep(0.5)  # A is now blocked on the host row B holds
            assert waiting.is_alive()
        waiting.join(timeout=30)
        assert isinstance(outcome[0], Grant) and outcome[0].replayed
        assert outcome[0].reservation_id == earlier.reservation_id
        assert replica_a.optimistic is not None and replica_a.optimistic.admitted_groups == admitted
        assert replica_a.status(host, ResourceType.CPU).pending == 2
        assert replica_a.drift() == []
    finally:
        replica_a.close()
        replica_b.close()


async def test_the_event_loop_path_on_postgresql(pg_url: str) -> None:
    """`try_reserve_many_async`: a group for a host this process has read, that fits, is granted on the
    async connection; one that does not fit is None (nothing written) and the thread's path is told it was
    tried; a killed connection is `unavailable`, then reconnects."""
    ledger = Ledger.open(pg_url, migrate=False)
    host = f"pg-{uuid.uuid4().hex[:8]}"
    lone = [(host, Ask(AllocationRequest(vcpus=1)))]
    strategy = ledger.optimistic
    assert strategy is not None
    try:
        other = [("not-read-here", Ask(AllocationRequest(vcpus=1)))]
        assert await ledger.try_reserve_many_async(other) == (None, True)  # not read by this process
        ledger.register_host(host, capacities(cpu=2, memory=GIB), {})
        ledger.reserve_many(lone)
        granted, tried = await ledger.try_reserve_many_async(lone)
        assert tried and granted is not None and isinstance(granted[0], Grant)
        too_big = [(host, Ask(AllocationRequest(vcpus=50)))]
        assert await ledger.try_reserve_many_async(too_big) == (None, True)

        def not_again(_: Any) -> None:
            raise AssertionError("the one-round-trip path was tried twice")

        strategy.admit = not_again  # type: ignore[assignment,method-assign]
        refused = ledger.reserve_many(too_big, optimistic=False)  # as the service does after the loop
        assert type(refused[0]).__name__ == "InsufficientResources"
        pid = strategy._async_connection.info.backend_pid
        with ledger.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(Unavailable):
            await ledger.try_reserve_many_async(lone)
        assert (await ledger.try_reserve_many_async(lone))[0] is not None  # on a new connection
        assert strategy.admitted_groups == 3
        assert ledger.status(host, ResourceType.CPU).pending == 3
        assert ledger.drift() == []
    finally:
        await ledger.aclose()
        ledger.close()


def test_try_reserve_many_async_is_not_for_sqlite(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    lone = [("any", Ask(AllocationRequest(vcpus=1)))]
    try:
        assert asyncio.run(ledger.try_reserve_many_async(lone)) == (None, False)
    finally:
        ledger.close()


def test_the_event_loop_path_sees_what_other_connections_wrote(sqlite_url: str) -> None:
    """`try_reserve_many` reuses the host row its last commit left only while no other connection has written
    since: a hold or a release made elsewhere (a thread's connection, another process) is counted."""
    ledger = Ledger.open(sqlite_url, migrate=False)
    host = f"seen-{uuid.uuid4().hex[:8]}"
    lone: list[HostAsk] = [(host, Ask(AllocationRequest(vcpus=1)))]
    ledger.register_host(host, capacities(cpu=3), {ResourceType.CPU: 1.0})
    try:
        first = ledger.try_reserve_many(lone)
        assert first is not None and isinstance(first[0], Grant)
        assert isinstance(ledger.reserve_many(lone)[0], Grant)  # on a pooled connection
        again = ledger.try_reserve_many(lone)
        assert again is not None and isinstance(again[0], Grant)
        full = ledger.try_reserve_many(lone)
        assert full is not None and isinstance(full[0], LedgerError)  # 3 of 3 vCPUs held
        ledger.release(first[0].reservation_id)  # elsewhere again
        after = ledger.try_reserve_many(lone)
        assert after is not None and isinstance(after[0], Grant)
        with ledger.engine.connect() as conn:
            held = conn.execute(
                select(reservations.c.vcpus).where(
                    reservations.c.host_id == host, reservations.c.status == "held"
                )
            ).all()
        assert len(held) == 3
        assert ledger.drift() == []
    finally:
        ledger.close()
