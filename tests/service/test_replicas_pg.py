"""Two `ledger serve` replicas on one PostgreSQL and one NATS (the test's own nats-server), hammered by
16 client OS processes: exactly as many one-vCPU grants as the host holds, every other answer a clean
`insufficient_resources`, and both replicas in the queue group."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
from pathlib import Path
from typing import Any

import pytest

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.store.ledger import Ledger
from tests.service.conftest import ServeFactory
from tests.service.helpers import gather_replies, raw, refusal_of, reply_of, serve_env, unique
from tests.service.workers import hammer

pytestmark = pytest.mark.postgres

N = 24  # the host fits exactly N one-vCPU requests
PROCESSES = 16
PER_PROCESS = 5  # 80 requests in all


def _replica_env(data_dir: Path, host: str, db_url: str, nats_url: str) -> dict[str, str]:
    return serve_env(
        data_dir,
        host,
        LEDGER_DATABASE_URL=db_url,
        LEDGER_NATS_URL=nats_url,
        CPU_LIMIT=str(N),
        OVERSUB_CPU="1",
    )


def _run_clients(url: str) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    body = {"vcpus": 1}
    workers = [
        ctx.Process(target=hammer, args=(url, PER_PROCESS, body, barrier, results)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    replies: list[dict[str, Any]] = []
    try:
        for _ in workers:
            replies.extend(results.get(timeout=120))
    except queue.Empty:
        raise AssertionError(f"only {len(replies)} replies came back from the client processes") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
        results.join_thread()
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    return replies


async def test_two_replicas_grant_exactly_what_fits(
    nats_server: EmbeddedNats, serve_factory: ServeFactory, pg_database_factory: Any, tmp_path: Path
) -> None:
    db_url: str = pg_database_factory()  # fresh and unmigrated: the first replica migrates it
    host = unique("rep")
    envs = [_replica_env(tmp_path / f"replica-{i}", host, db_url, nats_server.url) for i in range(2)]
    # one after the other: started at once, the second can die on the first's consumer position (see
    # test_first_position_written_by_two_replicas_at_once)
    replicas = [await asyncio.to_thread(serve_factory, tmp_path / f"replica-{i}", envs[i]) for i in range(2)]
    assert {r.info["nats_url"] for r in replicas} == {nats_server.url}

    nc = await connect(nats_server.url, name="replica-test", reconnect_forever=False)
    try:
        pings = await gather_replies(nc, "$SRV.PING.ledger")
        assert len(pings) == 2 and len({p["id"] for p in pings}) == 2, pings
        assert {p["name"] for p in pings} == {"ledger"}

        replies = await asyncio.to_thread(_run_clients, nats_server.url)
        assert len(replies) == PROCESSES * PER_PROCESS
        unanswered = [r for r in replies if r["ok"] is None]
        assert not unanswered, unanswered[:5]
        granted = [r for r in replies if r["ok"]]
        refused = [r for r in replies if not r["ok"]]
        assert len(granted) == N, f"{len(granted)} granted for a host that fits {N}"
        assert len({r["reservation_id"] for r in granted}) == N
        assert {r["code"] for r in refused} == {"insufficient_resources"}
        assert {r["_error_header"] for r in refused} == {"409"}
        assert {r["resource"] for r in refused} == {"cpu"}
        assert all(r["message"].startswith("insufficient CPU: requested 1 vCPU") for r in refused)
        assert all("Traceback" not in json.dumps(r) for r in replies)

        status = reply_of(await raw(nc, "status", {"resource": "cpu"}))
        assert status["allocated"] + status["pending"] == N and status["available"] == 0, status
        assert (status["capacity"], status["effective_limit"]) == (N, N)
        refusal_of(await raw(nc, "validate", {"vcpus": 1}), "insufficient_resources", "409")

        # each replica's own stats: together they answered every validate, and both took a share
        stats = [
            json.loads((await nc.request(f"$SRV.STATS.ledger.{p['id']}", b"", timeout=5)).data) for p in pings
        ]
        validates = [
            next(e["num_requests"] for e in s["endpoints"] if e["name"] == "validate") for s in stats
        ]
        assert sum(validates) == PROCESSES * PER_PROCESS + 1
        assert min(validates) > 0, f"one replica answered nothing: {validates}"
    finally:
        await nc.close()

    for replica in replicas:
        assert await asyncio.to_thread(replica.stop) == 0, replica.log()
        assert "Traceback" not in replica.log()

    ledger = Ledger.open(db_url, migrate=False)
    try:
        assert ledger.drift() == []
        for grant in granted:
            assert ledger.reservation(grant["reservation_id"]).status == "held"
    finally:
        ledger.close()


NUL_CASES = [
    ("status", {"host": "a\u0000b"}),
    ("validate", {"vcpus": 1, "idempotency_key": "key\u0000"}),
    ("release", {"reservation_id": "r\u0000"}),
]


@pytest.mark.parametrize(("endpoint", "body"), NUL_CASES, ids=[c[0] for c in NUL_CASES])
async def test_nul_in_a_string_is_an_invalid_request_on_postgresql(
    nats_server: EmbeddedNats,
    serve_factory: ServeFactory,
    pg_database_factory: Any,
    tmp_path: Path,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    env = _replica_env(tmp_path / "replica", unique("nul"), pg_database_factory(), nats_server.url)
    await asyncio.to_thread(serve_factory, tmp_path / "replica", env)
    nc = await connect(nats_server.url, name="nul-test", reconnect_forever=False)
    try:
        refusal_of(await raw(nc, endpoint, body), "invalid_request", "400")
    finally:
        await nc.close()


def test_first_position_written_by_two_replicas_at_once(pg_database_factory: Any) -> None:
    """What two replicas' EventConsumer.start do on a fresh PostgreSQL, in the order that loses."""
    import threading

    from ledger.store import journal, migrate

    url: str = pg_database_factory()
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False)
    try:
        first = ledger.engine.connect()
        first.begin()
        journal.advance(first, "ledger", [], 0)  # replica 1: inserts, not yet committed
        errors: list[BaseException] = []

        def second() -> None:  # replica 2: sees no row, inserts, waits on replica 1's key
            try:
                with ledger.engine.begin() as conn:
                    journal.advance(conn, "ledger", [], 0)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)  # blocked on the unique index until replica 1 commits
        first.commit()
        first.close()
        thread.join(timeout=30)
        assert not errors, f"the second replica failed: {type(errors[0]).__name__}"
    finally:
        ledger.close()


async def test_sigterm_while_nats_is_down_still_exits_0(
    nats_server: EmbeddedNats, serve_factory: ServeFactory, tmp_path: Path
) -> None:
    env = _replica_env(
        tmp_path / "replica", unique("down"), f"sqlite:///{tmp_path / 'ledger.db'}", nats_server.url
    )
    serve = await asyncio.to_thread(serve_factory, tmp_path / "replica", env)
    await asyncio.to_thread(nats_server.stop)
    await asyncio.sleep(1.0)  # serve notices and starts reconnecting
    code = await asyncio.to_thread(serve.stop, 20)
    assert "Traceback" not in serve.log()
    assert code == 0
