"""`place` on both engines, where its keys meet `validate`'s, where its input is checked, and where holds
nobody came back for give their room back to fleet searches.

A place key names one reservation across the fleet: a retry finds it wherever it was first answered, even
when that answer replayed a `validate` hold made on the host under the same key. Bad input is the caller's
to fix whether or not any host fits. A host full of expired holds that nothing locks is swept by
`Ledger.sweep_due` (what `ledger serve` runs every `sweep_interval`), and searches find it again."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger.core.charges import AllocationRequest, Ask
from ledger.core.errors import Conflict, InsufficientResources, InvalidRequest, LedgerError
from ledger.core.placement import PlaceCall
from ledger.core.resources import ResourceType
from ledger.core.results import Grant
from ledger.store.ledger import Ledger
from ledger.store.sql import hosts as hosts_table
from ledger.store.sql import placements
from tests.conftest import FakeClock, capacities

GIB = 2**30
SMALL = AllocationRequest(vcpus=2, memory_bytes=2 * GIB)


@pytest.fixture
def opened(timed: Ledger) -> Ledger:
    """The ledger on each engine, on the test's clock (`clock`)."""
    return timed


def _fleet(ledger: Ledger, vcpus: list[int]) -> tuple[str, list[str]]:
    """Hosts of `vcpus` each (ratio 1), labelled with a run of their own: (run, host ids)."""
    run = f"pk{uuid.uuid4().hex[:8]}"
    names = []
    for index, cpu in enumerate(vcpus):
        host = f"{run}-{index}"
        ledger.register_host(host, capacities(cpu=cpu), {ResourceType.CPU: 1.0}, labels={"run": run})
        names.append(host)
    return run, names


def _placed(ledger: Ledger, key: str) -> tuple[str, str] | None:
    query = select(placements.c.host_id, placements.c.reservation_id).where(
        placements.c.idempotency_key == key
    )
    with ledger.engine.connect() as conn:
        row = conn.execute(query).one_or_none()
    return None if row is None else (str(row[0]), str(row[1]))


def test_a_place_that_replays_a_validate_hold_keeps_it_across_the_fleet(opened: Ledger) -> None:
    """The best host already holds a `validate` reservation under the key, for the same amounts: `place`
    replays it and records the key, so a retry after that host filled up returns it again instead of
    holding a second reservation on another host."""
    run, (big, small) = _fleet(opened, [16, 8])
    key = f"{run}-vm"
    validated = opened.reserve(big, SMALL, idempotency_key=key)

    placed = opened.place(Ask(SMALL, key), labels={"run": run})
    assert (placed.host_id, placed.reservation_id, placed.replayed) == (big, validated.reservation_id, True)
    assert _placed(opened, key) == (big, validated.reservation_id)

    opened.reserve(big, AllocationRequest(vcpus=14))  # the host is full now; `small` is the best left
    retried = opened.place(Ask(SMALL, key), labels={"run": run})
    assert (retried.host_id, retried.reservation_id) == (big, validated.reservation_id)
    assert opened.list_reservations(host_id=small)[1] == 0, "the retry held again on another host"


def test_a_place_in_a_group_that_replays_a_validate_hold_records_it(opened: Ledger) -> None:
    """The same through `place_many`, which settles calls as a group on PostgreSQL."""
    run, (big, small) = _fleet(opened, [16, 8])
    keys = [f"{run}-a", f"{run}-b"]
    validated = opened.reserve(big, SMALL, idempotency_key=keys[0])

    answers = opened.place_many([PlaceCall(Ask(SMALL, key), {"run": run}) for key in keys])
    assert all(isinstance(a, Grant) for a in answers), answers
    first = answers[0]
    assert isinstance(first, Grant) and first.reservation_id == validated.reservation_id
    assert _placed(opened, keys[0]) == (big, validated.reservation_id)

    def holds() -> int:
        return sum(opened.list_reservations(host_id=host)[1] for host in (big, small))

    opened.reserve(big, AllocationRequest(vcpus=opened.status(big, ResourceType.CPU).available))
    before = holds()
    retried = opened.place(Ask(SMALL, keys[0]), labels={"run": run})
    assert (retried.host_id, retried.reservation_id) == (big, validated.reservation_id)
    assert holds() == before, "the retry held again on another host"


def test_a_place_key_a_validate_used_for_other_amounts_on_the_host_is_a_conflict(opened: Ledger) -> None:
    """On the host it lands on, a place key is that host's key too: other amounts under it are a conflict,
    as `validate` answers them, naming the host; nothing is held."""
    run, (big, _) = _fleet(opened, [16, 8])
    key = f"{run}-vm"
    opened.reserve(big, AllocationRequest(vcpus=1), idempotency_key=key)

    with pytest.raises(Conflict) as refused:
        opened.place(Ask(SMALL, key), labels={"run": run})
    assert refused.value.details["host"] == big
    assert _placed(opened, key) is None
    assert opened.list_reservations(host_id=big)[1] == 1


@pytest.mark.parametrize(
    ("ask", "policy", "field"),
    [
        (Ask(SMALL, ttl=-1), "spread", "ttl_seconds"),
        (Ask(SMALL, ttl=10**9), "spread", "ttl_seconds"),
        (Ask(SMALL, key=""), "spread", "idempotency_key"),
        (Ask(SMALL, key="k" * 256), "spread", "idempotency_key"),
        (Ask(SMALL), "fill", "policy"),
    ],
)
@pytest.mark.parametrize("fits", [True, False])
def test_bad_place_input_is_named_whether_or_not_a_host_fits(
    opened: Ledger, ask: Ask, policy: str, field: str, fits: bool
) -> None:
    run, _ = _fleet(opened, [16 if fits else 1])
    with pytest.raises(InvalidRequest) as refused:
        opened.place(ask, labels={"run": run}, policy=policy)
    assert refused.value.details.get("field") == field
    [answer] = opened.place_many([PlaceCall(ask, {"run": run}, policy=policy)])
    assert isinstance(answer, InvalidRequest) and answer.details.get("field") == field


def test_a_bad_call_in_a_group_is_answered_alone(opened: Ledger) -> None:
    run, _ = _fleet(opened, [16])
    good, bad = opened.place_many(
        [PlaceCall(Ask(SMALL, f"{run}-ok"), {"run": run}), PlaceCall(Ask(SMALL, ttl=0), {"run": run})]
    )
    assert isinstance(good, Grant)
    assert isinstance(bad, InvalidRequest) and bad.details.get("field") == "ttl_seconds"


def test_an_unknown_policy_in_a_search_is_invalid_request(opened: Ledger) -> None:
    with pytest.raises(InvalidRequest) as refused:
        opened.candidates(SMALL, policy="fill")
    assert refused.value.details.get("field") == "policy"


def test_holds_past_their_ttl_give_their_room_back_to_searches_once_swept(
    opened: Ledger, clock: FakeClock
) -> None:
    """A host filled by holds nobody came back for looks full to a search (it reads the host's running
    totals without locking it) until the sweep ends them; then candidates and place find it again."""
    run, [host] = _fleet(opened, [4])
    forgotten = opened.reserve(host, AllocationRequest(vcpus=4), ttl=30)
    assert opened.candidates(SMALL, labels={"run": run}).candidates == []

    clock.now += timedelta(seconds=31)
    assert opened.candidates(SMALL, labels={"run": run}).candidates == [], "swept without a sweep?"
    assert opened.sweep_due(limit=10_000) >= 1
    assert opened.reservation(forgotten.reservation_id).status == "expired"
    assert [c.host_id for c in opened.candidates(SMALL, labels={"run": run}).candidates] == [host]
    placed = opened.place(Ask(SMALL), labels={"run": run})
    assert placed.host_id == host


def test_the_sweep_leaves_holds_inside_their_ttl(opened: Ledger, clock: FakeClock) -> None:
    run, [host] = _fleet(opened, [4])
    kept = opened.reserve(host, AllocationRequest(vcpus=4), ttl=60)
    clock.now += timedelta(seconds=59)
    opened.sweep_due(limit=10_000)
    assert opened.reservation(kept.reservation_id).status == "held"
    with pytest.raises(InsufficientResources):
        opened.place(Ask(SMALL), labels={"run": run})


def test_a_sweep_takes_at_most_its_limit_of_hosts(opened: Ledger, clock: FakeClock) -> None:
    run, hosts = _fleet(opened, [4, 4, 4])
    for host in hosts:
        opened.reserve(host, AllocationRequest(vcpus=4), ttl=5)
    clock.now += timedelta(days=1)  # past every hold of this session's database too

    def due() -> int:  # hosts with a hold past its TTL, here and in other tests sharing the database
        query = select(func.count()).select_from(hosts_table).where(hosts_table.c.next_expiry <= clock.now)
        with opened.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    before = due()
    assert before >= 3
    for swept in range(1, 4):
        assert opened.sweep_due(limit=1) == 1
        assert due() == before - swept, "a sweep took more hosts than its limit, or swept none"
    while opened.sweep_due(limit=100):
        pass
    assert due() == 0
    assert [c.host_id for c in opened.candidates(SMALL, labels={"run": run}).candidates] == sorted(hosts)
    assert not isinstance(opened.place(Ask(SMALL), labels={"run": run}), LedgerError)
