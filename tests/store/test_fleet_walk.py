"""Spread placement on PostgreSQL walks the room index instead of scoring every host (store/fleet.py): on a
fleet of a hundred hosts in three sizes, filled unevenly, its best `k` must be exactly the first `k` of the
ranking by the core decision — when the walk settles early, when it reads on past ties and batches, and
when it gives up and ranks every host."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

import ledger.store.fleet as fleet_module
from ledger.core.admission import Admit, decide
from ledger.core.charges import AllocationRequest, Ask
from ledger.core.placement import SPREAD, ranked, room_after
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store.ledger import Ledger

GIB = 2**30
SIZES = ((8, 32), (16, 64), (64, 256))  # cores, GiB
REQUESTS = {
    "small": AllocationRequest(vcpus=1, memory_bytes=GIB),
    "medium": AllocationRequest(vcpus=4, memory_bytes=8 * GIB),
    "large": AllocationRequest(vcpus=12, memory_bytes=16 * GIB),  # too big for the 8-core hosts
    "stated bandwidth": AllocationRequest(vcpus=2, memory_bytes=GIB, network_download_bps=10, disk_io_bps=0),
}


@pytest.fixture(scope="module")
def fleet(pg_url: str) -> Iterator[tuple[Ledger, list[str], list[str]]]:
    """100 hosts (some small ones empty, so several share a room of 1.0), and the other hosts to exclude."""
    ledger = Ledger.open(pg_url, migrate=False)
    rng = random.Random(7)
    run = uuid.uuid4().hex[:6]
    names = []
    for index in range(100):
        host = f"w{run}-{index:03d}"
        cores, memory = SIZES[index % len(SIZES)]
        caps = {r: Capacity(10**12, Source.CONFIGURED) for r in ResourceType}
        caps[ResourceType.CPU] = Capacity(cores, Source.CONFIGURED)
        caps[ResourceType.MEMORY] = Capacity(memory * GIB, Source.CONFIGURED)
        ledger.register_host(host, caps, {r: 1.0 for r in ResourceType})
        # small hosts empty or lightly used, big ones busier: the most room is not where a VM leaves the most
        if cores < 64:
            busy = 0 if index % 5 == 0 else rng.randint(1, cores // 2)
        else:
            busy = rng.randint(16, cores - 1)
        with ledger.batch(hosts=[host]):  # one transaction a host: the fixture is set up in seconds
            for n in range(busy):
                vm = InstanceRecord(
                    id=f"vm{n}", state="Running", vcpus=1, memory_bytes=rng.choice((1, 2, 4)) * GIB
                )
                ledger.apply_instance(host, vm)
        names.append(host)
    others = [h for h in ledger.host_ids() if h not in set(names)]
    yield ledger, names, others
    assert ledger.drift() == []
    ledger.close()


def _expected(ledger: Ledger, names: list[str], request: AllocationRequest, k: int) -> list[str]:
    """The first `k` hosts by the core decision and spread's ranking, host by host."""
    states = ledger.fleet.states(names)
    scored = []
    for host in names:
        outcome = decide(states[host], [Ask(request)], {}, ledger.defaults, 60).outcomes[0]
        if isinstance(outcome, Admit):
            scored.append((host, room_after(states[host], outcome.charge)))
    return [host for host, _ in ranked(scored, SPREAD)[:k]]


@pytest.mark.parametrize("walk_rows", [16, 100_000], ids=["gives up early", "walks on"])
@pytest.mark.parametrize("name", sorted(REQUESTS))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_the_walk_finds_the_best_k_the_decision_ranks_first(
    fleet: tuple[Ledger, list[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    walk_rows: int,
    name: str,
    k: int,
) -> None:
    ledger, names, others = fleet
    monkeypatch.setattr(fleet_module, "_WALK_ROWS", walk_rows)
    request = REQUESTS[name]
    expected = _expected(ledger, names, request, k)
    assert len(expected) == k  # every request fits somewhere: the ranking is what is tested
    best = ledger.fleet.best(request, labels={}, exclude=others, policy=SPREAD, limit=k)
    assert [c.host_id for c in best] == expected
    found = ledger.candidates(request, exclude=others, policy=SPREAD, limit=k)
    assert [c.host_id for c in found.candidates] == expected


def test_a_small_request_settles_down_the_index_without_ranking_every_host(
    fleet: tuple[Ledger, list[str], list[str]],
) -> None:
    """The walk reads on in batches past the hosts that share a room of 1.0, and stops there: no statement
    scores every host."""
    ledger, names, others = fleet
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engines = [ledger.engine, ledger.fleet.walker]  # walks run on connections of their own
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        best = ledger.fleet.best(REQUESTS["small"], labels={}, exclude=others, policy=SPREAD, limit=1)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)
    assert [c.host_id for c in best] == _expected(ledger, names, REQUESTS["small"], 1)
    walked = [s for s in statements if "ORDER BY h.room DESC" in s]
    assert len(walked) >= 2, "expected the walk to read more than one batch"
    assert not [s for s in statements if "ORDER BY LEAST" in s], "the walk fell back to ranking every host"
