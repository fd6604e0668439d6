"""`Ledger.place_many`: `place` calls that arrive together, answered as `place` answers each one. On
PostgreSQL they are settled as a group (one search per kind of request, one transaction for the holds), so
these tests hold the group to the one-by-one answers: the same hosts in the same order, the same refusals,
twins and retries answered by their first grant, a host taken after the search passed on to the next."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from ledger.core.charges import AllocationRequest, Ask
from ledger.core.errors import Conflict, InsufficientResources
from ledger.core.placement import PACK, SPREAD, PlaceCall
from ledger.core.resources import ResourceType
from ledger.core.results import Grant
from ledger.store import migrate
from ledger.store.ledger import Ledger
from tests.conftest import capacities

GIB = 2**30
SMALL = AllocationRequest(vcpus=2, memory_bytes=2 * GIB, disk_bytes=10 * 10**9)
LARGE = AllocationRequest(vcpus=6, memory_bytes=8 * GIB)
# (cpu, memory GiB, vCPUs already held): unlike hosts, so both policies have a real order to follow
SHAPES = [(8, 16, 0), (16, 64, 4), (16, 32, 10), (32, 64, 0), (8, 32, 6), (24, 48, 2)]


def _fleet(ledger: Ledger, run: str) -> list[str]:
    names = []
    for index, (cpu, memory, held) in enumerate(SHAPES):
        host = f"{run}-{index}"
        ratios = {ResourceType.CPU: 1.0}
        ledger.register_host(host, capacities(cpu=cpu, memory=memory * GIB), ratios, labels={"run": run})
        if held:
            ledger.reserve(host, AllocationRequest(vcpus=held))
        names.append(host)
    return names


def _calls(run: str, request: AllocationRequest, count: int, policy: str, tag: str) -> list[PlaceCall]:
    return [PlaceCall(Ask(request, f"{tag}-{i}"), {"run": run}, policy=policy) for i in range(count)]


def _outcome(answer: Any) -> tuple[str, ...]:
    if isinstance(answer, Grant):
        return ("granted", answer.host_id, str(answer.charge.amounts()))
    return (answer.code, answer.message)


@pytest.mark.parametrize("policy", [SPREAD, PACK])
def test_a_group_places_where_one_by_one_calls_would(pg_database_factory: Any, policy: str) -> None:
    """Two databases with the same fleet: one takes each kind of request as a group, the other call by
    call. Every answer matches, up to the refusals once the fleet is full."""
    ledgers = []
    for _ in range(2):
        url = pg_database_factory()
        migrate.upgrade(url)
        ledgers.append(Ledger.open(url, migrate=False))
    grouped, one_by_one = ledgers
    try:
        run = "grp"
        for ledger in ledgers:
            _fleet(ledger, run)
        for tag, request, count in (("a", SMALL, 9), ("b", LARGE, 7), ("c", SMALL, 30)):
            calls = _calls(run, request, count, policy, tag)
            together = grouped.place_many(calls)
            alone = [one_by_one.place_many([call])[0] for call in calls]
            assert [_outcome(a) for a in together] == [_outcome(a) for a in alone]
        assert isinstance(together[-1], InsufficientResources)  # the fleet ran full: refusals compared too
        assert together[-1].message.startswith("no host fits")
        for ledger in ledgers:
            assert ledger.drift() == []
    finally:
        for ledger in ledgers:
            ledger.close()


def test_twins_retries_and_reused_keys_in_a_group(db_url: str) -> None:
    """A key placed before is replayed on its host; a key twice in one group gets one grant; a key reused
    for another request is a conflict: as `place` answers them one at a time (both engines)."""
    ledger = Ledger.open(db_url, migrate=False)
    run = f"tw{uuid.uuid4().hex[:8]}"
    try:
        hosts = _fleet(ledger, run)

        def held() -> set[str]:
            pages = [ledger.list_reservations(host_id=h, status="held")[0] for h in hosts]
            return {r.reservation_id for page in pages for r in page}

        before = held()
        first = ledger.place(Ask(SMALL, f"{run}-k0"), labels={"run": run})
        calls = [
            PlaceCall(Ask(SMALL, f"{run}-k0"), {"run": run}),  # a retry of `first`
            PlaceCall(Ask(SMALL, f"{run}-k1"), {"run": run}),
            PlaceCall(Ask(SMALL, f"{run}-k1"), {"run": run}),  # its twin
            PlaceCall(Ask(LARGE, f"{run}-k1"), {"run": run}),  # the key again, for another request
            PlaceCall(Ask(SMALL), {"run": run}),  # no key
        ]
        retry, new, twin, reused, keyless = ledger.place_many(calls)
        assert isinstance(retry, Grant) and retry.replayed
        assert (retry.reservation_id, retry.host_id) == (first.reservation_id, first.host_id)
        assert isinstance(new, Grant) and not new.replayed
        assert isinstance(twin, Grant) and twin.replayed
        assert (twin.reservation_id, twin.host_id) == (new.reservation_id, new.host_id)
        assert isinstance(reused, Conflict), reused
        assert isinstance(keyless, Grant) and keyless.reservation_id not in {first.reservation_id}
        assert held() - before == {first.reservation_id, new.reservation_id, keyless.reservation_id}
        assert ledger.drift() == []
    finally:
        ledger.close()


def test_a_host_taken_after_the_search_passes_its_call_to_the_next_host(pg_url: str) -> None:
    """Hosts with room for one ask each. Right after the group's search, another replica fills the host the
    group chose first: the admission refuses it there, and that call goes on to a host with room."""
    ledger = Ledger.open(pg_url, migrate=False)
    other = Ledger.open(pg_url, migrate=False)
    run = f"tk{uuid.uuid4().hex[:8]}"
    try:
        hosts = []
        for index in range(3):
            host = f"{run}-{index}"
            cpu = 4 + index  # each left with no CPU by the ask: tied, so taken in host id order
            ledger.register_host(host, capacities(cpu=cpu), {ResourceType.CPU: 1.0}, labels={"run": run})
            ledger.reserve(host, AllocationRequest(vcpus=cpu - 2))  # room for one ask of 2 vCPUs
            hosts.append(host)
        search = ledger.fleet.best
        taken: list[str] = []

        def then_taken(*args: Any, **kwargs: Any) -> Any:
            found = search(*args, **kwargs)
            if not taken:  # once: the calls placed on their own search again, untouched
                taken.append(found[0].host_id)
                other.reserve(found[0].host_id, AllocationRequest(vcpus=2))
            return found

        ledger.fleet.best = then_taken  # type: ignore[method-assign]
        request = AllocationRequest(vcpus=2)
        answers = ledger.place_many([PlaceCall(Ask(request, f"{run}-{i}"), {"run": run}) for i in range(2)])
        assert taken == [hosts[0]]  # the group's first choice; its second, hosts[1], was still free
        assert all(isinstance(a, Grant) for a in answers), answers
        assert sorted(a.host_id for a in answers if isinstance(a, Grant)) == [hosts[1], hosts[2]]
        for host in hosts:
            assert ledger.status(host, ResourceType.CPU).available == 0
        assert ledger.drift() == []
    finally:
        other.close()
        ledger.close()


def test_a_mixed_group_holds_within_every_limit(pg_url: str) -> None:
    """Kinds of request, policies and labels mixed in one group, more than the fleet holds: every grant
    fits its host by the decision, nothing is held past a limit, the totals equal the rows."""
    ledger = Ledger.open(pg_url, migrate=False)
    run = f"mx{uuid.uuid4().hex[:8]}"
    try:
        _fleet(ledger, run)
        calls = []
        for i in range(40):
            request = (SMALL, LARGE, AllocationRequest(vcpus=1))[i % 3]
            policy = (SPREAD, PACK)[i % 2]
            calls.append(PlaceCall(Ask(request, f"{run}-{i}"), {"run": run}, policy=policy))
        answers = ledger.place_many(calls)
        grants = [a for a in answers if isinstance(a, Grant)]
        refused = [a for a in answers if isinstance(a, InsufficientResources)]
        assert len(grants) + len(refused) == len(calls) and grants and refused
        with ledger.engine.connect() as conn:
            over = conn.execute(
                text(
                    "SELECT host_id, resource FROM fleet_status "
                    "WHERE host_id LIKE :run AND allocated + pending > effective_limit"
                ),
                {"run": f"{run}-%"},
            ).all()
        assert over == []
        assert ledger.drift() == []
    finally:
        ledger.close()
