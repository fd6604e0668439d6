"""Past one machine: a three-node JetStream cluster on loopback, two `ledger serve` replicas on one
PostgreSQL, a few thousand lifecycle events published while one node stops (and comes back) and later the
stream's leader stops. Every event is applied exactly once, the books equal a replay of the same events,
and `validate` keeps answering throughout (`unavailable` only while a leader is being elected)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from sqlalchemy import text

from ledger.bus.jetstream import STREAM
from ledger.bus.publisher import publish_event
from ledger.events.apply import apply_events
from ledger.events.contract import make_event, parse_envelope
from ledger.store import migrate
from ledger.store.ledger import Ledger
from tests.cluster.harness import NatsCluster, stream_leader
from tests.service.conftest import ServeFactory
from tests.service.helpers import raw, reply_of, serve_env, unique

pytestmark = pytest.mark.postgres

HOSTS, PER_HOST = 30, 50  # 1,500 instances created, then 1,500 of them resized: 3,000 events
STOP_FOLLOWER_AT, RESTART_AT, STOP_LEADER_AT = 800, 1500, 2000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    started = NatsCluster(tmp_path / "nats")
    try:
        started.start()
        yield started
    finally:
        started.stop()


def lifecycle() -> list[dict[str, Any]]:
    """Instance created on every host, then each resized: a few thousand events with rising versions."""
    events = []
    for version, vcpus in ((1, 1), (2, 2)):
        for n in range(PER_HOST):
            for h in range(HOSTS):
                record = {"id": f"vm-{n}", "state": "Running", "vcpus": vcpus, "memory_bytes": 2**30}
                kind = "instance.created" if version == 1 else "instance.resized"
                events.append(make_event(kind, f"fleet-{h}", record, version=version))
    return events


async def keep_validating(url: str, host: str, stop: asyncio.Event, outcomes: Counter[str]) -> None:
    """validate (and release) on the serve's own host every 50 ms; count what came back."""
    nc = Client()
    await nc.connect(servers=url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        while not stop.is_set():
            try:
                reply = reply_of(await raw(nc, "validate", {"host": host, "vcpus": 1}, timeout=5))
            except (NatsError, TimeoutError):
                outcomes["no reply"] += 1
            else:
                outcomes["ok" if reply["ok"] else reply["code"]] += 1
                if reply["ok"]:
                    await raw(nc, "release", {"reservation_id": reply["reservation_id"]}, timeout=5)
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def publish_through_failures(cluster: NatsCluster, events: list[dict[str, Any]]) -> None:
    """Publish `events` in order, as a publisher does (retrying with the same message id), while a follower
    of the stream stops and comes back, and later the stream's leader stops."""
    nc = Client()
    await nc.connect(servers=cluster.client_urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream()
        leader_info = await stream_leader(js, STREAM, replicas=3)
        assert leader_info.cluster is not None and leader_info.config.num_replicas == 3
        follower = next(r.name for r in leader_info.cluster.replicas or [])
        for n, envelope in enumerate(events):
            if n == STOP_FOLLOWER_AT:
                cluster.stop_node(follower)
            elif n == RESTART_AT:
                cluster.restart_node(follower)
                await stream_leader(js, STREAM, replicas=3)  # the follower caught up
            elif n == STOP_LEADER_AT:
                leader = (await js.stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
                assert leader is not None
                cluster.stop_node(leader)
            await publish_event(js, envelope, retries=20, timeout=2.0)
    finally:
        await nc.close()


async def test_events_survive_a_node_and_the_leader_and_validate_keeps_answering(
    cluster: NatsCluster, serve_factory: ServeFactory, pg_database_factory: Any, tmp_path: Path
) -> None:
    await cluster.wait_for_jetstream()
    db_url: str = pg_database_factory()
    host = unique("cluster")
    replicas = []
    for i in range(2):  # one after the other, as replicas are rolled out
        env = serve_env(
            tmp_path / f"serve-{i}",
            host,
            LEDGER_DATABASE_URL=db_url,
            LEDGER_NATS_URL=cluster.url,
            LEDGER_STREAM_REPLICAS="3",
            LEDGER_SERVE_SAMPLES_USAGE="false",
        )
        replicas.append(await asyncio.to_thread(serve_factory, tmp_path / f"serve-{i}", env))

    stop_validating = asyncio.Event()
    outcomes: Counter[str] = Counter()
    validating = asyncio.create_task(keep_validating(cluster.url, host, stop_validating, outcomes))
    events = lifecycle()
    await publish_through_failures(cluster, events)

    book = Ledger.open(db_url, migrate=False)
    try:
        deadline = asyncio.get_running_loop().time() + 120
        while (applied := _processed(book)) < len(events):
            assert asyncio.get_running_loop().time() < deadline, f"{applied} of {len(events)} applied"
            await asyncio.sleep(0.5)
        stop_validating.set()
        await validating
        with book.engine.connect() as conn:
            outcomes_in_db = dict(
                conn.execute(text("SELECT outcome, COUNT(*) FROM processed_events GROUP BY outcome")).all()
            )
        assert outcomes_in_db == {"applied": len(events)}  # each once: none stale, none lost
        assert book.drift() == []
        assert _books(book) == _replayed(events, tmp_path / "replay.db")
    finally:
        stop_validating.set()
        book.close()

    assert outcomes["ok"] > 0
    assert set(outcomes) <= {"ok", "unavailable", "no reply"}, outcomes
    assert outcomes["ok"] > 5 * (outcomes["unavailable"] + outcomes["no reply"]), outcomes
    for replica in replicas:
        assert await asyncio.to_thread(replica.stop) == 0
        assert "Traceback" not in replica.log()
        assert "deadlock" not in replica.log().lower()


def _processed(book: Ledger) -> int:
    with book.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM processed_events")).scalar_one())


def _books(book: Ledger) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Every fleet host's instances and running totals."""
    with book.engine.connect() as conn:
        instances = {
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT host_id, instance_id, state, version, vcpus FROM instances "
                    "WHERE host_id LIKE 'fleet-%'"
                )
            )
        }
        totals = {
            tuple(row)
            for row in conn.execute(
                text("SELECT host_id, alloc_cpu, alloc_memory FROM hosts WHERE host_id LIKE 'fleet-%'")
            )
        }
    return instances, totals


def _replayed(events: list[dict[str, Any]], path: Path) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The same events applied in order to a fresh SQLite ledger."""
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    replay = Ledger.open(url, migrate=False)
    try:
        with replay.batch(hosts={e["host"] for e in events}):
            apply_events(replay, [(parse_envelope(e), None) for e in events])
        return _books(replay)
    finally:
        replay.close()
