"""`ledger events consume` killed with SIGKILL at random points while thousands of events are applied, then
restarted, over and over: nothing is lost, nothing is doubled, and the end state is the plain replay's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import ensure_stream, stream_config
from ledger.store.ledger import Ledger
from tests.bus.helpers import (
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
KILLS = 6


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


@pytest.mark.slow
async def test_sigkilled_consumer_restarted_again_and_again_loses_and_doubles_nothing(
    nats_server: EmbeddedNats, fresh_db_url: str, tmp_path: Path
) -> None:
    events = lifecycle(HOSTS, 150, seed=11)
    assert len(events) >= 3000
    ids = {e["id"] for e in events}
    nc = await connect(nats_server.url, name="crash-publisher")
    try:
        await ensure_stream(nc.jetstream(), stream_config())
        assert await publish_all(nc.jetstream(), events) == len(events)
    finally:
        await nc.close()

    ledger = Ledger.open(fresh_db_url, migrate=False)
    consumer = ConsumerProcess(tmp_path, nats_server.url, fresh_db_url)
    rng = random.Random(12)
    progress = [0]
    started = time.monotonic()
    try:
        for _ in range(KILLS):
            consumer.start()
            await consumer.wait_started()
            before = processed_count(ledger)
            # kill while it is applying: after it has committed at least one more batch, plus a random delay
            # (the events a killed consumer held come back only after ack_wait: there may be none to take)
            with contextlib.suppress(AssertionError):
                await wait_for(lambda b=before: processed_count(ledger) > b, 3, "progress before the kill")
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            consumer.kill()
            progress.append(processed_count(ledger))
        assert progress[-1] < len(events), "the kills came too late to interrupt the stream"
        consumer.start()
        await consumer.wait_started()
        await wait_for(lambda: processed_count(ledger) >= len(events), 100, "every event applied")
        await asyncio.sleep(0.5)  # anything left would be a double
        consumer.kill()  # (SIGTERM takes 30 s: see test_consume_exits_promptly_on_sigterm)
        elapsed = time.monotonic() - started

        applied = processed_ids(ledger)
        assert len(applied) == len(set(applied)) == len(ids)
        assert set(applied) == ids
        assert ledger.dead_letters() == []
        assert ledger.drift() == []
        assert ledger.stream_position("ledger") == len(events)
        expected = replay(events, new_sqlite_url(tmp_path / "replay"))
        try:
            # redelivered events arrive after newer ones: tombstones differ (test_tombstone_rows_…)
            assert snapshot(ledger, HOSTS, full_tombstones=False) == snapshot(
                expected, HOSTS, full_tombstones=False
            )
        finally:
            expected.close()
        assert sorted(progress) == progress  # progress only ever went forward
        print(f"{len(events)} events, {KILLS} kills at {progress[1:]}, {elapsed:.1f} s")
    finally:
        if consumer.process is not None:
            consumer.kill()
        ledger.close()


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
