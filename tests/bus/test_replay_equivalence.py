"""Events through a real JetStream into the ledger end in exactly the state a plain replay of the same events
gives, however they are duplicated, redelivered or reordered (docs/events.md, "How the ledger applies
events")."""

from __future__ import annotations

import random
from pathlib import Path

from nats.aio.client import Client

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import ensure_stream, stream_config
from ledger.events import make_event
from ledger.store.ledger import Ledger
from tests.bus.helpers import (
    RunningConsumer,
    lifecycle,
    new_sqlite_url,
    payload,
    processed_ids,
    publish_all,
    publish_in_order,
    replay,
    snapshot,
    subject,
    wait_for,
)

HOSTS = ["h-a", "h-b", "h-c"]


async def test_a_realistic_lifecycle_lands_as_a_plain_replay_does(
    nc: Client, fresh_db_url: str, tmp_path: Path
) -> None:
    events = lifecycle(HOSTS, 40, seed=1)
    assert len(events) > 400
    ledger = Ledger.open(fresh_db_url, migrate=False)
    expected = replay(events, new_sqlite_url(tmp_path / "replay"))
    try:
        async with RunningConsumer(nc, ledger, batch_size=32) as running:
            await publish_in_order(nc.jetstream(), events)
            await wait_for(lambda: running.consumer.handled >= len(events), 60, "every event handled")
        assert {o.outcome for o in running.outcomes} == {"applied"}
        assert [o.event_id for o in running.outcomes] == [e["id"] for e in events]
        assert snapshot(ledger, HOSTS) == snapshot(expected, HOSTS)
        assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in events)
        assert ledger.stream_position("ledger") == len(events)
        assert ledger.drift() == []
        # something is still counted, so the comparison is not between two empty ledgers
        status = ledger.full_status("h-a")
        assert status.allocations and status.disk_breakdown.images_bytes > 0
    finally:
        ledger.close()
        expected.close()


async def test_the_same_event_published_again_outside_the_duplicate_window_is_applied_once(
    nc: Client, fresh_db_url: str, tmp_path: Path
) -> None:
    """The stream keeps the second copy (another Nats-Msg-Id, as after the duplicate window); the ledger's
    processed-events record drops it. A copy with the same Nats-Msg-Id is dropped by the stream itself."""
    events = lifecycle(["h-dup"], 10, seed=2)
    js = nc.jetstream()
    ledger = Ledger.open(fresh_db_url, migrate=False)
    expected = replay(events, new_sqlite_url(tmp_path / "replay"))
    try:
        async with RunningConsumer(nc, ledger) as running:
            await publish_in_order(js, events)
            copies = random.Random(3).sample(events, 15)
            for e in copies:
                ack = await js.publish(subject(e), payload(e), headers={"Nats-Msg-Id": e["id"] + "-again"})
                assert not ack.duplicate
                same = await js.publish(subject(e), payload(e), headers={"Nats-Msg-Id": e["id"]})
                assert same.duplicate  # inside the window: the stream dropped it
            total = len(events) + len(copies)
            await wait_for(lambda: running.consumer.handled >= total, 60, "every copy handled")
        assert len(running.outcomes) == total
        assert sorted(o.event_id for o in running.by_outcome("duplicate")) == sorted(e["id"] for e in copies)
        assert snapshot(ledger, ["h-dup"]) == snapshot(expected, ["h-dup"])
        assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in events)
        assert ledger.drift() == []
    finally:
        ledger.close()
        expected.close()


async def test_an_event_committed_but_never_acked_is_redelivered_and_applied_once(
    nats_server: EmbeddedNats, fresh_db_url: str, tmp_path: Path, short_ack_wait: float
) -> None:
    """A consumer that dies between the commit and the ack: the server redelivers after ack_wait, and the
    next consumer finds the event ids already recorded."""
    events = lifecycle(["h-crash"], 15, seed=4)
    ledger = Ledger.open(fresh_db_url, migrate=False)
    expected = replay(events, new_sqlite_url(tmp_path / "replay"))
    first = await connect(nats_server.url, name="dies-before-ack")
    try:
        await ensure_stream(first.jetstream(), stream_config())
        await publish_in_order(first.jetstream(), events)
        running = RunningConsumer(first, ledger, batch_size=20)
        settled: list[str] = []

        async def lose_acks(action: object, **kwargs: object) -> None:  # the process "dies" before acking
            settled.append(getattr(action, "__name__", "?"))

        running.consumer._settle = lose_acks  # type: ignore[method-assign]
        async with running:
            await wait_for(lambda: running.consumer.handled >= 40, 30, "the first 40 events committed")
        committed = sorted(processed_ids(ledger))
        assert len(committed) >= 40 and set(settled) == {"ack"}
        await first.close()  # nothing was acked

        second = await connect(nats_server.url, name="restarted")
        try:
            async with RunningConsumer(second, ledger) as again:
                await wait_for(
                    lambda: (
                        len(processed_ids(ledger)) == len(events)
                        and len(again.by_outcome("duplicate")) >= len(committed)
                    ),
                    30,
                    "the unacked events redelivered",
                )
            redelivered = sorted(o.event_id for o in again.by_outcome("duplicate"))
            assert redelivered == committed
            assert sorted(o.event_id for o in again.by_outcome("applied")) == sorted(
                set(e["id"] for e in events) - set(committed)
            )
        finally:
            await second.close()
        assert snapshot(ledger, ["h-crash"]) == snapshot(expected, ["h-crash"])
        assert ledger.drift() == []
    finally:
        if not first.is_closed:
            await first.close()
        ledger.close()
        expected.close()


async def test_events_published_in_a_random_order_converge_to_the_ordered_state(
    nc: Client, fresh_db_url: str, tmp_path: Path
) -> None:
    ordered = lifecycle(HOSTS, 30, seed=5)
    shuffled = list(ordered)
    random.Random(6).shuffle(shuffled)
    assert shuffled != ordered
    ledger = Ledger.open(fresh_db_url, migrate=False)
    expected = replay(ordered, new_sqlite_url(tmp_path / "replay"))
    try:
        async with RunningConsumer(nc, ledger, batch_size=50) as running:
            await publish_all(nc.jetstream(), shuffled)
            await wait_for(lambda: running.consumer.handled >= len(shuffled), 60, "every event handled")
        outcomes = {o.outcome for o in running.outcomes}
        assert "stale" in outcomes  # the reordering really delivered some old versions late
        assert outcomes <= {"applied", "stale"}
        assert snapshot(ledger, HOSTS, full_tombstones=False) == snapshot(
            expected, HOSTS, full_tombstones=False
        )
        assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in ordered)
        assert ledger.drift() == []
    finally:
        ledger.close()
        expected.close()


async def test_tombstone_rows_do_not_depend_on_order(nc: Client, sqlite_db_url: str, tmp_path: Path) -> None:
    host = "h-tomb"
    record = {"id": "i-1", "name": "vm", "state": "Running", "vcpus": 4, "memory_bytes": 2**30}
    created = make_event("instance.created", host, {**record, "state": "Created"}, 1)
    started = make_event("instance.started", host, record, 2)
    deleted = make_event("instance.deleted", host, {"id": "i-1"}, 3)
    ledger = Ledger.open(sqlite_db_url, migrate=False)
    expected = replay([created, started, deleted], new_sqlite_url(tmp_path / "replay"))
    try:
        async with RunningConsumer(nc, ledger) as running:
            await publish_in_order(nc.jetstream(), [deleted, created, started])  # the delete overtakes
            await wait_for(lambda: running.consumer.handled >= 3, 30, "three events handled")
        assert [o.outcome for o in running.outcomes] == ["applied", "stale", "stale"]
        assert snapshot(ledger, [host]) == snapshot(expected, [host])
    finally:
        ledger.close()
        expected.close()
