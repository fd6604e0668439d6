"""The real service under a race: `ledger serve` replicas, client OS processes released together by a
barrier, a seeded mix of validates (that fit, that cannot fit, with GPUs, with and without stated
bandwidths, with idempotency keys retried and reused, with keys every process shares) and releases. Then
the replies and the database must agree that admission was exact: nothing over-allocated at any moment,
every hold still held accounted for to the byte, every retry answered as the first time, every reuse a
conflict, every request answered exactly once."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import queue
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy import text

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.client import LedgerClient
from ledger.core.errors import UnknownHost
from ledger.events.contract import make_event
from ledger.store.ledger import Ledger
from tests.protocol.test_protocol_schemas import strict_validator
from tests.service import race_client
from tests.service.conftest import ServeFactory
from tests.service.helpers import GB, GIB, LEAKS, gather_replies, raw, reply_of, serve_env, unique

pytestmark = pytest.mark.slow

CLIENTS = 8
LANES = 2  # requests in flight per client process
DURATION = 3.0  # seconds of racing

# A host small enough for the race to fill: 8 vCPUs at ratio 1.0 and 2 passthrough GPU slots.
CAPACITY = {
    "cpu": {"capacity": 8, "source": "configured"},
    "memory": {"capacity": 16 * GIB, "source": "configured"},
    "disk": {"capacity": 100 * GB, "source": "configured"},
    "network": {"capacity": 125_000_000, "source": "configured"},
    "disk_io": {"capacity": 1_000_000_000, "source": "configured"},
    "gpu": {"mode": "passthrough", "total_slots": 2, "used_slots": 0},
    "ratios": {"cpu": 1.0},
}
LIMITS = {  # effective limits: capacity × ratio (network and disk I/O at their default 2.0)
    "cpu": 8,
    "memory": 16 * GIB,
    "disk": 100 * GB,
    "network": 250_000_000,
    "disk_io": 2_000_000_000,
    "gpu": 2,
}
RESOURCES = ("cpu", "memory", "disk", "network", "disk_io")
BODY_AMOUNT = {"cpu": "vcpus", "memory": "memory_bytes", "disk": "disk_bytes"}
BANDWIDTHS = ("network_download_bps", "network_upload_bps", "disk_io_bps")
AMOUNTS = ("vcpus", "memory_bytes", "disk_bytes", *BANDWIDTHS)
# ops whose refusal by cpu or gpu shows the host was full (a too-large request is refused on an empty host)
FITTING_OPS = ("fit", "gpu", "keyed", "retry", "shared")


def _takes(charged: dict[str, int]) -> dict[str, int]:
    """What a grant's `charged` takes of each resource (the link counts the larger direction)."""
    return {
        "cpu": charged["vcpus"],
        "memory": charged["memory_bytes"],
        "disk": charged["disk_bytes"],
        "network": max(charged["network_download_bps"], charged["network_upload_bps"]),
        "disk_io": charged["disk_io_bps"],
        "gpu": charged["gpu"],
    }


def _is_validate(record: dict[str, Any]) -> bool:
    return bool(record["endpoint"] == "validate")


def _granted(record: dict[str, Any]) -> bool:
    return bool(_is_validate(record) and record["reply"] and record["reply"]["ok"])


def _same_request(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two validate bodies ask the same (the TTL is not compared, as the service does)."""
    return {k: v for k, v in a.items() if k != "ttl_seconds"} == {
        k: v for k, v in b.items() if k != "ttl_seconds"
    }


@dataclass
class Findings:
    """What broke the rules, by kind; the test prints a few of each."""

    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, record: dict[str, Any] | None, what: str) -> None:
        shown = (
            ""
            if record is None
            else f" | sent {json.dumps(record['body'])} got {json.dumps(record['reply'])}"
        )
        self.problems[kind].append(what + shown)

    def check(self) -> None:
        if self.problems:
            lines = [
                f"{kind}: {len(found)}, e.g.\n  " + "\n  ".join(found[:3])
                for kind, found in self.problems.items()
            ]
            raise AssertionError("the race broke the rules:\n" + "\n".join(lines))


# ---- setting up: the host, the client processes, a status monitor -----------------------------------------


async def _register_host(url: str, host: str) -> dict[str, Any]:
    """Publish the race host's capacity and wait until the service answers for it."""
    async with await LedgerClient.connect(url, timeout=10.0, reconnect_forever=False) as client:
        ack = await client.publish_event(make_event("host.capacity", host, CAPACITY, version=1))
        assert not ack.duplicate
        deadline = asyncio.get_running_loop().time() + 20.0
        while True:
            try:
                status = (await client.status(host=host)).to_dict()
            except UnknownHost:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            assert {r: status[r]["effective_limit"] for r in RESOURCES} == {r: LIMITS[r] for r in RESOURCES}
            assert (status["gpu"]["total_slots"], status["gpu"]["used_slots"]) == (2, 0), status["gpu"]
            return status


def _run_clients(url: str, host: str, seed: int) -> list[dict[str, Any]]:
    """Start the client processes, wait for every one's records; a process that fails fails the test."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CLIENTS)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=race_client.run,
            args=(url, f"c{i}", host, seed * 100 + i, DURATION, LANES, barrier, results),
            name=f"race-client-{i}",
        )
        for i in range(CLIENTS)
    ]
    for worker in workers:
        worker.start()
    records: list[dict[str, Any]] = []
    try:
        for _ in workers:
            _, got = results.get(timeout=90)
            records.extend(got)
    except queue.Empty:
        codes = [w.exitcode for w in workers]
        raise AssertionError(f"a client process sent no records (exit codes {codes})") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
        results.join_thread()
    assert [w.exitcode for w in workers] == [0] * CLIENTS
    return records


async def _monitor(nc: Client, host: str, stop: asyncio.Event, findings: Findings) -> dict[str, int]:
    """Poll the service's status while the race runs: no resource may ever pass its limit. Returns the
    most seen in use (allocated + pending) per resource."""
    peak = dict.fromkeys(LIMITS, 0)
    while not stop.is_set():
        status = reply_of(await raw(nc, "status", {"host": host, "allocations": False}))
        for resource in RESOURCES:
            one = status[resource]
            used = one["allocated"] + one["pending"]
            peak[resource] = max(peak[resource], used)
            if used > one["effective_limit"]:
                findings.add("over-allocated (status)", None, f"{resource}: {one}")
        gpu = status["gpu"]
        used = gpu["used_slots"] + gpu["pending_slots"]
        peak["gpu"] = max(peak["gpu"], used)
        if used > gpu["total_slots"]:
            findings.add("over-allocated (status)", None, f"gpu: {gpu}")
        await asyncio.sleep(0.05)
    return peak


async def _race(url: str, host: str, seed: int) -> tuple[list[dict[str, Any]], dict[str, int], Findings]:
    """The race itself, with the monitor polling beside it; then the service's default bandwidths for
    every vCPU count sent (to check what unstated bandwidths were charged)."""
    findings = Findings()
    nc = await connect(url, name="race-monitor", reconnect_forever=False)
    try:
        stop = asyncio.Event()
        monitor = asyncio.create_task(_monitor(nc, host, stop, findings))
        try:
            records = await asyncio.to_thread(_run_clients, url, host, seed)
        finally:
            stop.set()
            peak = await monitor
        vcpus = {r["body"]["vcpus"] for r in records if _is_validate(r)}
        defaults = {v: reply_of(await raw(nc, "defaults", {"host": host, "vcpus": v})) for v in vcpus}
    finally:
        await nc.close()
    for record in records:
        record["defaults"] = defaults.get(record["body"].get("vcpus"))
    return records, peak, findings


# ---- judging the replies ----------------------------------------------------------------------------------


def _expected_charge(body: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, int], set[str]]:
    """What the service must charge for `body`: stated amounts as stated, unstated bandwidths the default."""
    charged = {name: body.get(name, defaults[name] if name in BANDWIDTHS else 0) for name in AMOUNTS}
    charged["gpu"] = 1 if body.get("needs_gpu") else 0
    return charged, {name for name in BANDWIDTHS if name not in body}


def _check_every_reply(records: list[dict[str, Any]], findings: Findings) -> None:
    """Exactly one JSON reply to every request, described by its schema, no traceback or repr in it."""
    for record in records:
        if record["replies"] != 1:
            findings.add("not exactly one reply", record, f"{record['replies']} replies")
        if record["error"] is not None:
            findings.add("no proper reply", record, record["error"])
            continue
        for leak in LEAKS:
            if leak in json.dumps(record["reply"]):
                findings.add("a leak in a reply", record, leak)
        schema = f"{record['endpoint']}.reply" if record["reply"]["ok"] else "error.reply"
        errors = [e.message for e in strict_validator(schema).iter_errors(record["reply"])]
        if errors:
            findings.add("a reply its schema does not describe", record, f"{schema}: {errors[:2]}")


def _check_validate(record: dict[str, Any], host: str, findings: Findings) -> None:
    """One validate: a grant charged exactly what was asked (defaults for what was not stated), or a refusal
    whose numbers show the request did not fit."""
    body, reply, op = record["body"], record["reply"], record["op"]
    if reply["ok"]:
        charged, defaulted = _expected_charge(body, record["defaults"])
        if reply["host"] != host or reply["charged"] != charged or set(reply["defaulted"]) != defaulted:
            findings.add("wrong charge", record, f"expected {charged}, defaulted {sorted(defaulted)}")
        if op in ("too_large", "reuse"):
            findings.add("granted what must be refused", record, op)
        if not reply["replayed"] and reply["status"] != "held":
            findings.add("a new grant not held", record, reply["status"])
        return
    code = reply["code"]
    if code == "conflict":
        if "idempotency_key" not in body:
            findings.add("conflict without a key", record, "")
        return
    if code != "insufficient_resources" or record["header"] != "409":
        findings.add("unexpected refusal", record, f"header {record['header']}")
        return
    resource = reply.get("resource")
    if resource == "gpu":
        if not body.get("needs_gpu") or reply["requested"] != 1 or reply["available"] != 0:
            findings.add("wrong gpu refusal", record, "")
        return
    if resource not in RESOURCES:
        findings.add("refusal names no resource", record, "")
        return
    charged, _ = _expected_charge(body, record["defaults"])
    numbers = {k: reply.get(k) for k in ("requested", "available", "allocated", "pending", "effective_limit")}
    expected = {"requested": _takes(charged)[resource], "effective_limit": LIMITS[resource]}
    if not all(isinstance(n, int) for n in numbers.values()) or reply.get("host") != host:
        findings.add("a refusal without its numbers", record, "")
    elif (
        {k: numbers[k] for k in expected} != expected
        or numbers["available"] != max(0, LIMITS[resource] - numbers["allocated"] - numbers["pending"])
        or numbers["requested"] <= numbers["available"]
    ):
        findings.add("wrong numbers in a refusal", record, f"expected {expected}")


def _check_keys(records: list[dict[str, Any]], findings: Findings) -> dict[str, int]:
    """Per idempotency key: one reservation, granted once; every request sent after that grant's reply is a
    replay of it (the same request) or a conflict naming it (other amounts). Returns how many of each."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if _is_validate(record) and "idempotency_key" in record["body"]:
            by_key[record["body"]["idempotency_key"]].append(record)
    seen = {"replays": 0, "conflicts": 0, "keys granted": 0}
    for key, sent in by_key.items():
        firsts = [r for r in sent if _granted(r) and not r["reply"]["replayed"]]
        if len(firsts) > 1:
            findings.add(
                "a key granted twice", firsts[1], f"{key}: first {firsts[0]['reply']['reservation_id']}"
            )
            continue
        if not firsts:
            for record in sent:
                if _granted(record) or record["reply"]["code"] == "conflict":
                    findings.add("a replay or conflict of a key never granted", record, key)
            continue
        first = firsts[0]
        seen["keys granted"] += 1
        reservation_id = first["reply"]["reservation_id"]
        for record in sent:
            reply = record["reply"]
            same = _same_request(record["body"], first["body"])
            if _granted(record):
                if (
                    reply["reservation_id"] != reservation_id
                    or not same
                    or reply["charged"] != first["reply"]["charged"]
                ):
                    findings.add("a replay of another answer", record, f"{key}: first {reservation_id}")
                elif record is not first:
                    seen["replays"] += 1
            elif reply["code"] == "conflict":
                if same or reply.get("reservation_id") != reservation_id:
                    findings.add("a wrong conflict", record, f"{key}: held by {reservation_id}")
                else:
                    seen["conflicts"] += 1
            elif record["t0"] > first["t1"]:  # sent after the grant was answered: must not be decided anew
                findings.add("a key's retry decided anew", record, f"{key}: held by {reservation_id}")
        for record in sent:
            if record["op"] == "reuse" and _granted(record):
                findings.add("a reuse granted", record, key)
    return seen


def _check_releases(records: list[dict[str, Any]], findings: Findings) -> None:
    """Every release of a grant answers `released`, and a retry of its key afterwards reports it so."""
    for record in records:
        reply = record["reply"]
        if record["endpoint"] == "release":
            expected = record["body"]["reservation_id"]
            if not reply["ok"] or reply["reservation_id"] != expected or reply["status"] != "released":
                findings.add("a wrong release", record, "")
        elif record["op"] == "after_release":
            ok = reply["ok"] and reply["replayed"] and reply["status"] == "released"
            if not ok or reply["reservation_id"] != record["reservation_id"]:
                findings.add("a retry after release", record, f"released {record['reservation_id']}")


def _holds(records: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Every grant made (reservation id → its record) and when each released one was first asked back."""
    grants = {r["reply"]["reservation_id"]: r for r in records if _granted(r) and not r["reply"]["replayed"]}
    released: dict[str, float] = {}
    for record in records:
        if record["endpoint"] == "release":
            rid = record["body"]["reservation_id"]
            released[rid] = min(released.get(rid, math.inf), record["t0"])
    return grants, released


def _peak_held(grants: dict[str, dict[str, Any]], released: dict[str, float]) -> dict[str, int]:
    """The most the clients provably held at one moment, per resource: a grant surely holds from when its
    reply arrived until its release was sent (the processes share the system's monotonic clock)."""
    events: list[tuple[float, int, dict[str, int]]] = []
    for rid, record in grants.items():
        takes = _takes(record["reply"]["charged"])
        events.append((record["t1"], 1, takes))
        events.append((released.get(rid, math.inf), 0, {r: -v for r, v in takes.items()}))  # ends sort first
    held = dict.fromkeys(LIMITS, 0)
    peak = dict.fromkeys(LIMITS, 0)
    for _, _, change in sorted(events, key=lambda e: (e[0], e[1])):
        for resource, amount in change.items():
            held[resource] += amount
            peak[resource] = max(peak[resource], held[resource])
    return peak


def _judge_replies(records: list[dict[str, Any]], host: str, findings: Findings) -> dict[str, int]:
    """Every rule a reply must follow; returns counts of what the race exercised."""
    _check_every_reply(records, findings)
    findings.check()  # the rest reads the replies
    for record in records:
        if _is_validate(record):
            _check_validate(record, host, findings)
    seen = _check_keys(records, findings)
    _check_releases(records, findings)
    grants, released = _holds(records)
    for resource, most in _peak_held(grants, released).items():
        if most > LIMITS[resource]:
            findings.add("over-allocated (replies)", None, f"clients held {most} {resource} at once")
    refused = [r for r in records if _is_validate(r) and not r["reply"]["ok"]]
    new = [r["reply"] for r in grants.values()]
    seen.update(
        requests=len(records),
        grants=len(grants),
        released=len(released),
        gpu_grants=sum(g["charged"]["gpu"] for g in new),
        defaulted_grants=sum(1 for g in new if g["defaulted"]),
        stated_grants=sum(1 for g in new if not g["defaulted"]),
        full_refusals=sum(
            1 for r in refused if r["op"] in FITTING_OPS and r["reply"].get("resource") in ("cpu", "gpu")
        ),
        too_large_refusals=sum(1 for r in refused if r["op"] == "too_large"),
        after_release=sum(1 for r in records if r["op"] == "after_release"),
    )
    return seen


# ---- judging the database ---------------------------------------------------------------------------------


def _judge_database(url: str, host: str, records: list[dict[str, Any]], findings: Findings) -> None:
    """The ledger's own totals and rows: no drift, nothing over its limit, and `pending` exactly the sum of
    what the grants never released were charged; no reservation the clients do not know of."""
    grants, released = _holds(records)
    held = {rid: record for rid, record in grants.items() if rid not in released}
    expected = dict.fromkeys(LIMITS, 0)
    for record in held.values():
        for resource, amount in _takes(record["reply"]["charged"]).items():
            expected[resource] += amount
    ledger = Ledger.open(url, migrate=False)
    try:
        assert ledger.drift() == []
        status = ledger.full_status(host)
        with ledger.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT reservation_id, status FROM reservations WHERE host_id = :host"), {"host": host}
            )
            statuses = {row.reservation_id: row.status for row in rows}
    finally:
        ledger.close()
    for resource, one in status.resources.items():
        name = resource.value
        if one.allocated + one.pending > one.effective_limit or one.effective_limit != LIMITS[name]:
            findings.add("over-allocated (database)", None, f"{name}: {one}")
        if (one.allocated, one.pending) != (0, expected[name]):
            findings.add(
                "pending is not the sum of held grants", None, f"{name}: {one}, held {expected[name]}"
            )
    gpu = status.gpu or {}
    if gpu.get("used_slots", 0) + gpu.get("pending_slots", 0) > gpu.get("total_slots", 0):
        findings.add("over-allocated (database)", None, f"gpu: {gpu}")
    if (gpu.get("used_slots"), gpu.get("pending_slots")) != (0, expected["gpu"]):
        findings.add("pending is not the sum of held grants", None, f"gpu: {gpu}, held {expected['gpu']}")
    known = {rid: ("held" if rid in held else "released") for rid in grants}
    if statuses != known:
        unknown = sorted(set(statuses) - set(known))[:3]
        differ = [(rid, statuses.get(rid), want) for rid, want in known.items() if statuses.get(rid) != want][
            :3
        ]
        findings.add("reservations differ from the replies", None, f"unknown to clients {unknown}, {differ}")


def _judge(
    url: str, host: str, records: list[dict[str, Any]], peak: dict[str, int], findings: Findings
) -> None:
    seen = _judge_replies(records, host, findings)
    _judge_database(url, host, records, findings)
    findings.check()
    print(f"race: {seen}; most in use (status) {peak}")
    # not vacuous: the host filled (requests that fit an empty host were refused for CPU or GPU), and
    # every path was taken
    assert all(seen[k] > 0 for k in seen), seen


# ---- the tests --------------------------------------------------------------------------------------------


def _stop_clean(replicas: Iterable[Any]) -> None:
    for replica in replicas:
        assert replica.stop() == 0, replica.log()
        assert "Traceback" not in replica.log(), replica.log()


@pytest.mark.postgres
async def test_two_postgresql_replicas_admit_exactly_under_a_race(
    nats_server: EmbeddedNats,
    serve_factory: ServeFactory,
    pg_database_factory: Callable[[], str],
    tmp_path: Path,
) -> None:
    db_url = pg_database_factory()
    serve_host = unique("race-serve")
    replicas = []
    for i in range(2):  # one after the other: the first migrates the fresh database
        data_dir = tmp_path / f"replica-{i}"
        env = serve_env(data_dir, serve_host, LEDGER_DATABASE_URL=db_url, LEDGER_NATS_URL=nats_server.url)
        replicas.append(await asyncio.to_thread(serve_factory, data_dir, env))
    host = f"race-{uuid.uuid4().hex[:12]}"
    await _register_host(nats_server.url, host)

    records, peak, findings = await _race(nats_server.url, host, seed=1)

    nc = await connect(nats_server.url, name="race-stats", reconnect_forever=False)
    try:
        pings = await gather_replies(nc, "$SRV.PING.ledger")
        assert len(pings) == 2, pings
        answered = []
        for ping in pings:
            stats = json.loads((await nc.request(f"$SRV.STATS.ledger.{ping['id']}", b"", timeout=5)).data)
            answered.append(next(e["num_requests"] for e in stats["endpoints"] if e["name"] == "validate"))
    finally:
        await nc.close()
    assert min(answered) > 0, f"validates answered per replica: {answered}"

    await asyncio.to_thread(_stop_clean, replicas)
    _judge(db_url, host, records, peak, findings)


async def test_one_sqlite_service_admits_exactly_under_a_race(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await asyncio.to_thread(serve_factory, data_dir, serve_env(data_dir, unique("race-serve")))
    host = f"race-{uuid.uuid4().hex[:12]}"
    await _register_host(serve.nats_url, host)

    records, peak, findings = await _race(serve.nats_url, host, seed=2)

    await asyncio.to_thread(_stop_clean, [serve])
    _judge(f"sqlite:///{data_dir / 'ledger.db'}", host, records, peak, findings)
