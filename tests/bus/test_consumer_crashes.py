"""`ledger events consume` killed with SIGKILL at random points while a stream of many batches is applied,
then restarted, again and again: nothing is lost, nothing doubled, and the end state is the plain replay's."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ledger.bus.connect import connect
from ledger.bus.consumer import APPLIED_SUBJECT
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import DURABLE, STREAM, ensure_stream, stream_config
from ledger.store.ledger import Ledger
from tests.bus.helpers import (
    Envelope,
    cli_env,
    lifecycle,
    new_sqlite_url,
    processed_count,
    processed_ids,
    publish_all,
    replay,
    snapshot,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
HOSTS = ["k-1", "k-2", "k-3", "k-4"]
INSTANCES_PER_HOST = 60  # about 1,300 events: ten batches
BATCH = 128  # what `events consume` fetches and commits together by default
KILLS = 4
SHORT_ACK_WAIT_S = 2.0


class ConsumerProcess:
    """`python -m ledger events consume` with its output in files (no pipes left open)."""

    def __init__(self, tmp_path: Path, nats_url: str, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.args = [
            sys.executable,
            "-m",
            "ledger",
            "events",
            "consume",
            "--nats-url",
            nats_url,
            "--database-url",
            db_url,
        ]
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.tmp_path / f"consume-{self.runs}.out"

    def start(self) -> None:
        self.runs += 1
        with open(self.out, "wb") as out, open(self.tmp_path / f"consume-{self.runs}.err", "wb") as err:
            self.process = subprocess.Popen(
                self.args, cwd=REPO, env=cli_env(self.tmp_path), stdout=out, stderr=err
            )

    async def wait_started(self, timeout: float = 30) -> None:
        def started() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                err = (self.tmp_path / f"consume-{self.runs}.err").read_text()
                raise AssertionError(f"consumer exited with {self.process.returncode}: {err}")
            return "consuming events" in self.out.read_text()

        await wait_for(started, timeout, "the consumer to start")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        assert self.process.returncode == -signal.SIGKILL
        self.process = None

    def terminate(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.process = None
        return code


async def reached(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Whether `predicate` became true within `timeout` seconds (polled every `interval`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def start_with_short_ack_wait(consumer: ConsumerProcess, js: JetStreamContext) -> None:
    """Start the consumer, then give its durable a short ack wait on the server, so a batch that a killed
    consumer held is redelivered (to the next consumer, mid-stream) within seconds, not after the default
    minute. Only after the start: `ensure_consumer` puts the default back each time a consumer starts."""
    consumer.start()
    await consumer.wait_started()
    config = (await js.consumer_info(STREAM, DURABLE)).config
    config.ack_wait = SHORT_ACK_WAIT_S
    await js.add_consumer(STREAM, config)  # same name: the server updates it and re-times what is pending


class NewlyApplied:
    """Counts the outcomes other than `duplicate` that consumers announce on `ledger.applied.>` (core NATS,
    once an event is committed and acked): a lower bound on the events committed, known without reading
    the database (an SQLite read can wait behind the consumer's writes while the consumer races on)."""

    def __init__(self) -> None:
        self.count = 0

    async def note(self, msg: Msg) -> None:
        if json.loads(msg.data)["outcome"] != "duplicate":
            self.count += 1


async def kill_past(
    consumer: ConsumerProcess, applied: NewlyApplied, goal: int, rng: random.Random, js: JetStreamContext
) -> int:
    """SIGKILL the running consumer once it has announced `goal` newly applied events, a random few
    milliseconds later (so the kill falls anywhere in fetch → apply → commit → ack → announce). Returns
    the deliveries left unacknowledged on the server (held by the dead consumer, or an earlier one)."""
    if not await reached(lambda: applied.count >= goal, 30):
        pytest.fail(f"consumer run {consumer.runs} never got to {goal} events applied: {applied.count}")
    await asyncio.sleep(rng.uniform(0.0, 0.03))
    consumer.kill()
    return int((await js.consumer_info(STREAM, DURABLE)).num_ack_pending)


async def settled(js: JetStreamContext) -> bool:
    """Every event delivered and every delivery acknowledged: no redelivery is left that could double."""
    info = await js.consumer_info(STREAM, DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def assert_applied_exactly_once(ledger: Ledger, events: list[Envelope], tmp_path: Path) -> None:
    """Each event applied once, the position at the end, and the same state as a plain replay."""
    applied = processed_ids(ledger)
    assert len(applied) == len(set(applied)) == len(events)
    assert set(applied) == {e["id"] for e in events}
    assert ledger.letters.page() == []
    assert ledger.drift() == []
    assert ledger.stream_position(DURABLE) == len(events)
    expected = replay(events, new_sqlite_url(tmp_path / "replay"))
    try:
        # redelivered events arrive after newer ones: tombstones differ (test_tombstone_rows_…)
        assert snapshot(ledger, HOSTS, full_tombstones=False) == snapshot(
            expected, HOSTS, full_tombstones=False
        )
    finally:
        expected.close()


@pytest.mark.slow
async def test_sigkilled_consumer_restarted_again_and_again_loses_and_doubles_nothing(
    nats_server: EmbeddedNats, fresh_db_url: str, tmp_path: Path
) -> None:
    events = lifecycle(HOSTS, INSTANCES_PER_HOST, seed=11)
    assert len(events) >= 8 * BATCH  # the stream spans many batches, so a kill lands between two of them
    nc = await connect(nats_server.url, name="crash-test")
    js = nc.jetstream()
    applied = NewlyApplied()
    await nc.subscribe(f"{APPLIED_SUBJECT}.>", cb=applied.note)
    ledger = Ledger.open(fresh_db_url, migrate=False)
    consumer = ConsumerProcess(tmp_path, nats_server.url, fresh_db_url)
    rng = random.Random(12)
    # kill points spread over the first half of the stream, so every kill leaves events still to apply
    segment = len(events) // 2 // KILLS
    progress: list[int] = [0]  # events committed at each kill
    held: list[int] = []  # deliveries left unacknowledged at each kill
    started = time.monotonic()
    try:
        await ensure_stream(js, stream_config())
        assert await publish_all(js, events) == len(events)
        for k in range(KILLS):
            await start_with_short_ack_wait(consumer, js)
            goal = max(k * segment + rng.randint(1, segment), applied.count + 1)  # past the last kill too
            held.append(await kill_past(consumer, applied, goal, rng, js))
            progress.append(processed_count(ledger))
            assert progress[-1] < len(events), f"kill {k + 1} came after the whole stream was applied"
        assert all(a < b for a, b in pairwise(progress)), f"kills not at distinct points: {progress}"
        assert any(held), "no kill caught a consumer holding events: nothing had to be redelivered"

        await start_with_short_ack_wait(consumer, js)
        await wait_for(lambda: processed_count(ledger) >= len(events), 60, "every event applied")
        await wait_for(lambda: settled(js), 30, "every delivery acknowledged")
        consumer.kill()  # (SIGTERM takes 30 s: see test_consume_exits_promptly_on_sigterm)
        elapsed = time.monotonic() - started

        assert_applied_exactly_once(ledger, events, tmp_path)
        print(f"{len(events)} events, kills at {progress[1:]} holding {held}, {elapsed:.1f} s")
    finally:
        if consumer.process is not None:
            consumer.kill()
        ledger.close()
        await nc.close()


async def test_consume_exits_promptly_on_sigterm(
    nats_server: EmbeddedNats, sqlite_db_url: str, tmp_path: Path
) -> None:
    consumer = ConsumerProcess(tmp_path, nats_server.url, sqlite_db_url)
    consumer.start()
    try:
        await consumer.wait_started()
        await asyncio.sleep(1.5)
        assert consumer.process is not None
        consumer.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while consumer.process.poll() is None and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)
        assert consumer.process.returncode == 0, "still running 10 s after SIGTERM"
        consumer.process = None
    finally:
        if consumer.process is not None:
            consumer.kill()
