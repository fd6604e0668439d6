"""Many OS processes racing on one host: admission stays exact on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import pytest
from sqlalchemy import text

from ledger.core.charges import AllocationRequest
from ledger.core.errors import InsufficientResources
from ledger.core.records import InstanceRecord
from ledger.core.resources import ResourceType
from ledger.store.ledger import Ledger
from tests.conftest import capacities

PROCESSES = 16
ATTEMPTS_PER_PROCESS = 6
FITS = 37  # the host's CPU limit, in one-vCPU requests: fewer than the 96 attempts


def _reserve_worker(url: str, host_id: str, barrier: Any, results: Any) -> None:
    ledger = Ledger.open(url, migrate=False)
    granted, refused = [], []
    barrier.wait()
    for _ in range(ATTEMPTS_PER_PROCESS):
        try:
            granted.append(
                ledger.reserve(host_id, AllocationRequest(vcpus=1, memory_bytes=2**20)).reservation_id
            )
        except InsufficientResources as exc:
            refused.append(exc.details)
    ledger.close()
    results.put((granted, refused))


def _run(target: Any, *args: Any) -> list[Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    collected = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return collected


@pytest.mark.slow
def test_concurrent_reservations_grant_exactly_what_fits(db_url: str, host_id: str) -> None:
    ledger = Ledger.open(db_url, migrate=False)
    ratios = {r: 1.0 for r in ResourceType}
    ledger.register_host(host_id, capacities(cpu=FITS), ratios)

    outcomes = _run(_reserve_worker, db_url, host_id)

    granted = [rid for g, _ in outcomes for rid in g]
    refusals = [r for _, rs in outcomes for r in rs]
    assert len(granted) == FITS
    assert len(set(granted)) == FITS
    assert len(refusals) == PROCESSES * ATTEMPTS_PER_PROCESS - FITS
    for refusal in refusals:
        assert refusal["resource"] == "cpu"
        assert refusal["available"] == 0
        assert refusal["allocated"] + refusal["pending"] == FITS
        assert refusal["effective_limit"] == FITS
    cpu = ledger.status(host_id, ResourceType.CPU)
    assert (cpu.allocated, cpu.pending, cpu.available) == (0, FITS, 0)
    assert ledger.drift() == []
    ledger.close()


def _churn_worker(url: str, host_id: str, seed: int, barrier: Any, results: Any) -> None:
    """Reserve with short TTLs, then release, let expire, or consume with an instance; delete some."""
    rng = random.Random(seed)
    ledger = Ledger.open(url, migrate=False)
    live_instances: list[str] = []
    barrier.wait()
    for step in range(25):
        choice = rng.random()
        # Holds left to expire get a short TTL; those about to be consumed a long one (an instance that
        # arrives after its hold expired is still counted: it is a fact, and may over-commit the host).
        ttl = 0.05 if choice >= 0.8 else 30
        try:
            grant = ledger.reserve(host_id, AllocationRequest(vcpus=1, memory_bytes=2**20), ttl=ttl)
        except InsufficientResources:
            time.sleep(0.01)
            continue
        if choice < 0.3:
            ledger.release(grant.reservation_id)
        elif choice < 0.8:
            instance_id = f"{seed}-{step}"
            record = InstanceRecord(
                id=instance_id,
                state="Running",
                vcpus=1,
                memory_bytes=2**20,
                reservation_id=grant.reservation_id,
            )
            ledger.apply_instance(host_id, record, version=1)
            live_instances.append(instance_id)
            if rng.random() < 0.4:
                ledger.delete_instance(host_id, live_instances.pop(0), version=2)
        # else: leave the hold to expire
    ledger.close()
    results.put(live_instances)


def _churn(url: str, host_id: str, barrier: Any, results: Any) -> None:
    _churn_worker(url, host_id, random.randrange(10**9), barrier, results)


@pytest.mark.slow
def test_reserve_release_expire_and_consume_race_without_double_counting(db_url: str, host_id: str) -> None:
    ledger = Ledger.open(db_url, migrate=False)
    ledger.register_host(host_id, capacities(cpu=12), {r: 1.0 for r in ResourceType})

    outcomes = _run(_churn, db_url, host_id)

    live = sorted(i for instances in outcomes for i in instances)
    time.sleep(0.1)  # let the short holds pass their expiry
    cpu = ledger.status(host_id, ResourceType.CPU)
    assert ledger.drift() == []
    with ledger.engine.connect() as conn:
        active = sorted(
            conn.execute(
                text("SELECT instance_id FROM instances WHERE host_id = :h AND active AND NOT deleted"),
                {"h": host_id},
            ).scalars()
        )
        held = conn.execute(
            text("SELECT COALESCE(SUM(vcpus), 0) FROM reservations WHERE host_id = :h AND status = 'held'"),
            {"h": host_id},
        ).scalar_one()
    assert active == live  # nothing lost, nothing resurrected
    assert cpu.allocated == len(live)  # each instance counted once, its hold no longer
    assert cpu.pending == held
    assert cpu.allocated + cpu.pending <= cpu.effective_limit
    ledger.close()
