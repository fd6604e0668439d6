"""`place` raced across a fleet: 8 client OS processes against 2 `ledger serve` replicas on one PostgreSQL
and one NATS (the test's own nats-server), over 60 small hosts, until no host fits even the smallest ask.

The search reads without locking, so concurrent callers keep choosing the same hosts and losing to each
other; correctness must come from each host's admission. Afterwards the database is audited: no host holds
more than its effective limit (fleet_status from the running totals, resource_status from the rows), the
totals equal the row sums (`ledger_drift` is empty), and the held reservations are exactly the grants the
clients saw. Every key re-sent after its grant (right after, or once the fleet is full, to either replica)
was answered with that grant: the same host and the same reservation id; a key sent twice at once got
the same answer twice and was held once.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.client import LedgerClient
from ledger.core.charges import AllocationRequest
from ledger.core.errors import InsufficientResources, LedgerError
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store.ledger import Ledger
from tests.service.conftest import ServeFactory
from tests.service.helpers import gather_replies, serve_env, unique

pytestmark = pytest.mark.postgres

MIB, GIB, GB = 2**20, 2**30, 10**9
HOSTS = 60
PROCESSES = 8
TTL_SECONDS = 600  # no hold may expire while the test runs: the fleet only fills
# (vcpus, memory, disk) the clients ask for; bandwidths are stated as 0 so the numbers stay small
SIZES = ((1, 256 * MIB, 1 * GB), (1, 512 * MIB, 2 * GB), (2, 512 * MIB, 2 * GB), (2, GIB, 4 * GB))
SMALLEST = 0
MAX_LOST_RACES = 500  # per process: a refusal while hosts still fitted (taken meanwhile) is retried


def _capacities(cpu: int, memory: int) -> dict[ResourceType, Capacity]:
    return {
        ResourceType.CPU: Capacity(cpu, Source.CONFIGURED),  # × the default 4.0 ratio
        ResourceType.MEMORY: Capacity(memory, Source.CONFIGURED),
        ResourceType.DISK: Capacity(20 * GB, Source.CONFIGURED),
        ResourceType.NETWORK: Capacity(125_000_000, Source.CONFIGURED),
        ResourceType.DISK_IO: Capacity(GB, Source.CONFIGURED),
    }


def _body(size: int) -> dict[str, Any]:
    vcpus, memory, disk = SIZES[size]
    return {
        "vcpus": vcpus,
        "memory_bytes": memory,
        "disk_bytes": disk,
        "network_download_bps": 0,
        "network_upload_bps": 0,
        "disk_io_bps": 0,
        "ttl_seconds": TTL_SECONDS,
    }


# ---- the client processes (module level, so multiprocessing's spawn can import them) --------------------


async def _place(client: LedgerClient, key: str, size: int, policy: str, kind: str) -> dict[str, Any]:
    """One keyed place, recorded as what came back (never raises: the test judges every record)."""
    record: dict[str, Any] = {"key": key, "size": size, "kind": kind}
    try:
        grant = await client.place(**_body(size), policy=policy, idempotency_key=key)
    except InsufficientResources as exc:
        record.update(ok=False, code=exc.code, message=exc.message, fitting=exc.details.get("fitting"))
    except LedgerError as exc:  # unavailable, conflict, ...: the test fails on it
        record.update(ok=False, code=exc.code, message=exc.message, fitting=None)
    else:
        record.update(ok=True, host=grant.host, reservation_id=grant.reservation_id, replayed=grant.replayed)
    return record


async def _until_full(url: str, name: str, seed: int, barrier: Any) -> list[dict[str, Any]]:
    """Place random sizes until one fits nowhere, then the smallest until it fits nowhere either.

    Every third key is sent again right after its answer; every fifth twice at once (a retry racing its
    original), and once more after that; every other granted key once
    more at the end, when the fleet is (nearly) full.
    """
    rng = random.Random(seed)
    policy = "spread" if seed % 2 else "pack"
    client = await LedgerClient.connect(url, timeout=60, reconnect_forever=False)
    records: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(barrier.wait, 60)
        size = rng.randrange(len(SIZES))
        n = lost = 0
        while lost <= MAX_LOST_RACES:
            n += 1
            key = f"{name}-{n}"
            if n % 5 == 0:
                pair = await asyncio.gather(
                    _place(client, key, size, policy, "first"), _place(client, key, size, policy, "twin")
                )
                records.extend(pair)
                first = pair[0]
                retry = True
            else:
                first = await _place(client, key, size, policy, "first")
                records.append(first)
                retry = n % 3 == 0
            if retry:
                records.append(await _place(client, key, size, policy, "retry"))
            if first["ok"]:
                size = rng.randrange(len(SIZES))
            elif first["code"] != "insufficient_resources":
                break  # an unexpected error: reported, and the test fails on it
            elif first["fitting"]:  # hosts fitted, but concurrent callers took them first
                lost += 1
            elif size == SMALLEST:
                break  # not even the smallest ask fits anywhere: the fleet is full
            else:
                size = SMALLEST
        granted = [r for r in records if r["ok"] and r["kind"] == "first"]
        for record in granted[::2]:
            records.append(await _place(client, record["key"], record["size"], policy, "late"))
    finally:
        await client.close()
    return records


def place_until_full(url: str, name: str, seed: int, barrier: Any, results: Any) -> None:
    """The process's target: every place it sent and what came back, put on `results`."""
    results.put((name, asyncio.run(_until_full(url, name, seed, barrier))))


# ---- the test -------------------------------------------------------------------------------------------


def _run_clients(url: str) -> dict[str, list[dict[str, Any]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=place_until_full, args=(url, f"p{i}", i, barrier, results))
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for _ in workers:
            name, records = results.get(timeout=120)
            found[name] = records
    except queue.Empty:
        raise AssertionError(f"only {len(found)} of {PROCESSES} client processes reported") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
        results.join_thread()
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    return found


def _register_fleet(db_url: str) -> list[str]:
    """60 small hosts (4 or 8 vCPUs, 2 or 3 GiB), registered through the Ledger API."""
    ledger = Ledger.open(db_url)  # migrates the fresh database
    try:
        names = []
        for index in range(HOSTS):
            host = f"race-{index:02d}"
            caps = _capacities(1 + index % 2, (2 + index % 3 // 2) * GIB)
            ledger.register_host(host, caps, {})
            names.append(host)
        return names
    finally:
        ledger.close()


def _check_keys(records: list[dict[str, Any]]) -> int:
    """Per key: at most one grant, made once (every other grant of it a replay of the same host and
    reservation id); a key sent twice at once granted both times or neither; every retry sent after a
    grant (right after, or at the end) answered with it. Returns how many keys were sent more than once."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_key[record["key"]].append(record)
    for key, answers in by_key.items():
        grants = [a for a in answers if a["ok"]]
        if not grants:
            continue
        assert len({(a["host"], a["reservation_id"]) for a in grants}) == 1, f"{key} granted twice: {answers}"
        assert sum(not a["replayed"] for a in grants) == 1, f"{key} held more than once: {answers}"
        sent_first = [a for a in answers if a["kind"] in ("first", "twin")]
        # Twins run one at a time (same key). A refusal is not an answer kept for the key: the one that went
        # first may lose every attempt to other keys' requests and say so ("retry"), and the second then
        # find room. Any other difference is a bug.
        refused = [a for a in sent_first if not a["ok"]]
        assert len({a["ok"] for a in sent_first}) == 1 or all(
            "taken by concurrent requests" in a["message"] for a in refused
        ), f"{key}: twins answered differently: {answers}"
        if any(a["ok"] for a in sent_first):
            later = [a for a in answers if a["kind"] in ("retry", "late")]
            assert all(a["ok"] and a["replayed"] for a in later), f"{key}: a retry lost its grant: {answers}"
    return sum(len(answers) > 1 for answers in by_key.values())


def _audit(db_url: str, hosts: list[str], granted: dict[str, tuple[str, int]]) -> None:
    """The database after the race: within every limit, totals equal the rows, holds equal the grants."""
    ledger = Ledger.open(db_url, migrate=False)
    try:
        assert ledger.drift() == [], "running totals drifted from the recomputed sums"
        with ledger.engine.connect() as conn:
            fleet = conn.execute(
                text("SELECT host_id, resource, effective_limit, allocated, pending FROM fleet_status")
            ).all()
            audited = conn.execute(
                text("SELECT host_id, resource, effective_limit, allocated, pending FROM resource_status")
            ).all()
            held = conn.execute(
                text("SELECT reservation_id, host_id FROM reservations WHERE status = 'held'")
            ).all()
            placed: dict[str, str] = {
                rid: host
                for rid, host in conn.execute(text("SELECT reservation_id, host_id FROM placements"))
            }
        over = [r for r in fleet if r.allocated + r.pending > r.effective_limit]
        assert not over, f"hosts over their effective limit: {over}"
        assert sorted(map(tuple, fleet)) == sorted(map(tuple, audited)), "fleet_status ≠ resource_status"
        assert {r.reservation_id: r.host_id for r in held} == {
            rid: host for rid, (host, _) in granted.items()
        }, "the held reservations are not the grants the clients saw"
        assert placed == {rid: host for rid, (host, _) in granted.items()}
        cpu = {r.host_id: r.pending for r in fleet if r.resource == "cpu"}
        by_host: Counter[str] = Counter()
        for host, vcpus in granted.values():
            by_host[host] += vcpus
        assert {h: v for h, v in cpu.items() if v} == dict(by_host)
        assert all(cpu[host] > 0 for host in hosts), "a host took nothing although the smallest ask fit it"
        smallest = AllocationRequest(**{k: v for k, v in _body(SMALLEST).items() if k != "ttl_seconds"})
        search = ledger.candidates(smallest)
        assert (search.candidates, search.shortfalls.fitting) == ([], 0), "the fleet is not full"
    finally:
        ledger.close()


async def test_place_from_eight_processes_fills_the_fleet_without_over_promising(
    nats_server: EmbeddedNats, serve_factory: ServeFactory, pg_database_factory: Any, tmp_path: Path
) -> None:
    db_url: str = pg_database_factory()
    hosts = await asyncio.to_thread(_register_fleet, db_url)
    serve_host = unique("race-serve")  # the replicas' own host joins the fleet: small like the rest
    env = {
        "LEDGER_DATABASE_URL": db_url,
        "LEDGER_NATS_URL": nats_server.url,
        "CPU_LIMIT": "1",
        "MEMORY_LIMIT": "2GiB",
        "DISK_LIMIT": "20GB",
        "NETWORK_LIMIT": "1Gbps",
    }
    # one after the other: the second must not race the first for the consumer's first position
    replicas = [
        await asyncio.to_thread(
            serve_factory, tmp_path / f"replica-{i}", serve_env(tmp_path / f"replica-{i}", serve_host, **env)
        )
        for i in range(2)
    ]
    hosts.append(serve_host)

    found = await asyncio.to_thread(_run_clients, nats_server.url)
    records = [record for name in sorted(found) for record in found[name]]
    errors = [r for r in records if not r["ok"] and r["code"] != "insufficient_resources"]
    assert not errors, errors[:5]
    for name, mine in found.items():  # each process stopped because not even the smallest ask fit
        last = [r for r in mine if r["kind"] == "first"][-1]
        assert (last["ok"], last["size"], last["fitting"]) == (False, SMALLEST, 0), (name, last)
        assert last["message"].startswith("no host fits"), last
    resent = _check_keys(records)
    assert resent >= PROCESSES * 3, f"only {resent} keys were re-sent"
    granted = {
        r["reservation_id"]: (r["host"], SIZES[r["size"]][0])
        for r in records
        if r["ok"] and not r["replayed"]
    }
    assert len(granted) >= len(hosts)

    nc = await connect(nats_server.url, name="place-race-test", reconnect_forever=False)
    try:
        pings = await gather_replies(nc, "$SRV.PING.ledger")
        assert len({p["id"] for p in pings}) == 2, pings
        stats = [
            json.loads((await nc.request(f"$SRV.STATS.ledger.{p['id']}", b"", timeout=5)).data) for p in pings
        ]
    finally:
        await nc.close()
    places = [next(e["num_requests"] for e in s["endpoints"] if e["name"] == "place") for s in stats]
    assert sum(places) == len(records) and min(places) > 0, f"place answered per replica: {places}"

    for replica in replicas:
        assert await asyncio.to_thread(replica.stop) == 0, replica.log()
        assert "Traceback" not in replica.log()
    await asyncio.to_thread(_audit, db_url, hosts, granted)
