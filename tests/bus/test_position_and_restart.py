"""The consumer's position lives in the database: a database that lost commits makes the consumer rewind and
re-apply them. A NATS server restarted mid-stream is reconnected to without help."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import DURABLE, STREAM, ensure_stream, stream_config
from ledger.store.ledger import Ledger
from tests.bus.helpers import (
    RunningConsumer,
    lifecycle,
    new_sqlite_url,
    processed_count,
    processed_ids,
    publish_in_order,
    replay,
    snapshot,
    wait_for,
)


def _copy_database(url: str, tmp_path: Path, name: str) -> str:
    """A backup of a database no one is connected to: the SQLite file, or a PostgreSQL template copy."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        target = tmp_path / f"{name}.db"
        shutil.copyfile(parsed.database, target)
        return f"sqlite:///{target}"
    copy = f"{parsed.database}_{name}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{parsed.database}"'))
    finally:
        admin.dispose()
    return parsed.set(database=copy).render_as_string(hide_password=False)


async def test_a_database_restored_to_an_earlier_position_makes_the_consumer_rewind(
    nats_server: EmbeddedNats, fresh_db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    host = "h-pos"
    events = lifecycle([host], 30, seed=21)
    first, rest = events[:100], events[100:]
    nc = await connect(nats_server.url, name="position")
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())
        ledger = Ledger.open(fresh_db_url, migrate=False)
        async with RunningConsumer(nc, ledger) as running:
            await publish_in_order(js, first)
            await wait_for(lambda: running.consumer.handled >= len(first), 30, "the first events")
        ledger.close()
        backup = _copy_database(fresh_db_url, tmp_path, "backup")  # the consumer is stopped
        if "postgresql" in fresh_db_url:
            request.addfinalizer(lambda: _drop(backup))

        ledger = Ledger.open(fresh_db_url, migrate=False)
        async with RunningConsumer(nc, ledger) as running:
            await publish_in_order(js, rest)
            await wait_for(lambda: running.consumer.handled >= len(rest), 30, "the rest")
        ledger.close()
        info = await js.consumer_info(STREAM, DURABLE)
        assert info.ack_floor.stream_seq == len(events)

        # the database "loses" the last commits: restored from the backup, its position is 100
        restored = Ledger.open(backup, migrate=False)
        try:
            assert restored.stream_position(DURABLE) == len(first)
            assert processed_count(restored) == len(first)
            async with RunningConsumer(nc, restored) as running:
                await wait_for(lambda: processed_count(restored) == len(events), 30, "the replayed events")
            assert {o.outcome for o in running.outcomes} == {"applied"}
            assert [o.stream_seq for o in running.outcomes] == list(range(len(first) + 1, len(events) + 1))
            expected = replay(events, new_sqlite_url(tmp_path / "replay"))
            try:
                assert snapshot(restored, [host]) == snapshot(expected, [host])
            finally:
                expected.close()
            assert sorted(processed_ids(restored)) == sorted(e["id"] for e in events)
            assert restored.drift() == []
        finally:
            restored.close()
    finally:
        await nc.close()


def _drop(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


async def test_processed_rows_and_position_rolled_back_are_reapplied(
    nats_server: EmbeddedNats, sqlite_db_url: str, tmp_path: Path
) -> None:
    """The lost commit by hand: the last K processed_events rows deleted and consumer_positions rolled back
    (their effects kept, so they come back as `stale`): the consumer rewinds to the database's position."""
    host, k = "h-roll", 25
    events = lifecycle([host], 20, seed=22)
    nc = await connect(nats_server.url, name="rollback")
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())
        ledger = Ledger.open(sqlite_db_url, migrate=False)
        try:
            async with RunningConsumer(nc, ledger) as running:
                await publish_in_order(js, events)
                await wait_for(lambda: running.consumer.handled >= len(events), 30, "every event")
            n = len(events)
            with ledger.engine.begin() as conn:
                conn.execute(text("DELETE FROM processed_events WHERE stream_seq > :s"), {"s": n - k})
                conn.execute(text("UPDATE consumer_positions SET stream_seq = :s"), {"s": n - k})
            assert ledger.stream_position(DURABLE) == n - k
            async with RunningConsumer(nc, ledger) as running:
                await wait_for(lambda: processed_count(ledger) == n, 30, "the rolled-back events again")
            assert [o.stream_seq for o in running.outcomes] == list(range(n - k + 1, n + 1))
            assert {o.outcome for o in running.outcomes} <= {"stale", "applied"}
            assert ledger.stream_position(DURABLE) == n
            assert ledger.drift() == []
        finally:
            ledger.close()
    finally:
        await nc.close()


async def test_rewind_after_restore_also_replays_events_that_were_redelivered_late(
    nats_server: EmbeddedNats, sqlite_db_url: str, tmp_path: Path, short_ack_wait: float
) -> None:
    host = "h-gap"
    events = lifecycle([host], 10, seed=23)
    nc = await connect(nats_server.url, name="gap")
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())
        ledger = Ledger.open(sqlite_db_url, migrate=False)
        first = RunningConsumer(nc, ledger)
        await first.consumer.start()
        await publish_in_order(js, events)
        # a consumer fetches the first 10 events and dies before committing them
        dead = await connect(nats_server.url, name="dies")
        sub = await dead.jetstream().pull_subscribe_bind(durable=DURABLE, stream=STREAM)
        held = await sub.fetch(10, timeout=5)
        assert [m.metadata.sequence.stream for m in held] == list(range(1, 11))
        await dead.close()
        # another applies everything after them (position = len(events), ack floor still 0)
        async with RunningConsumer(nc, ledger) as running:
            await wait_for(lambda: running.consumer.handled >= len(events) - 10, 30, "the later events")
        ledger.close()
        backup = tmp_path / "backup.db"
        shutil.copyfile(sqlite_db_url.removeprefix("sqlite:///"), backup)
        ledger = Ledger.open(sqlite_db_url, migrate=False)
        async with RunningConsumer(nc, ledger) as running:  # ack_wait passes: 1–10 are redelivered
            await wait_for(lambda: processed_count(ledger) == len(events), 30, "the redelivered events")
        ledger.close()
        # the database loses that last commit: restored, it lacks events 1–10
        restored = Ledger.open(f"sqlite:///{backup}", migrate=False)
        try:
            assert processed_count(restored) == len(events) - 10
            async with RunningConsumer(nc, restored):
                await asyncio.sleep(3 * short_ack_wait)
            assert processed_count(restored) == len(events), "events 1–10 were never re-applied"
        finally:
            restored.close()
    finally:
        await nc.close()


async def test_the_consumer_reconnects_by_itself_when_nats_restarts_mid_stream(
    nats_server: EmbeddedNats, fresh_db_url: str, tmp_path: Path, short_ack_wait: float
) -> None:
    hosts = ["r-1", "r-2"]
    events = lifecycle(hosts, 100, seed=24)
    assert len(events) > 800
    store, port = nats_server.store_dir, nats_server.port
    nc = await connect(nats_server.url, name="through-restart")
    ledger = Ledger.open(fresh_db_url, migrate=False)
    replacement = EmbeddedNats(store, port=port)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())
        await publish_in_order(js, events)
        async with RunningConsumer(nc, ledger, batch_size=16) as running:
            await wait_for(lambda: running.consumer.handled >= 150, 30, "the stream under way")
            nats_server.stop()  # SIGTERM: JetStream shuts down cleanly, the store stays
            handled_when_stopped = running.consumer.handled
            assert handled_when_stopped < len(events)
            await asyncio.sleep(1.0)
            assert replacement.start() == f"nats://127.0.0.1:{port}"
            await wait_for(lambda: processed_count(ledger) == len(events), 60, "the rest after the restart")
            assert nc.is_connected
        assert running.consumer.handled > handled_when_stopped
        expected = replay(events, new_sqlite_url(tmp_path / "replay"))
        try:
            assert snapshot(ledger, hosts, full_tombstones=False) == snapshot(
                expected, hosts, full_tombstones=False
            )
        finally:
            expected.close()
        assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in events)
        assert ledger.drift() == []
    finally:
        await nc.close()
        ledger.close()
        replacement.stop()
