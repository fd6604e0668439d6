"""`ledger events publish|tail|dead-letters` as real subprocesses against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from ledger.bus.embedded import EmbeddedNats
from ledger.events import make_event
from ledger.store.ledger import Ledger
from tests.bus.helpers import RunningConsumer, cli_env, lifecycle, processed_ids, publish_in_order, wait_for

REPO = Path(__file__).resolve().parents[2]


def _ledger(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=REPO,
        env=cli_env(tmp_path),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_publish_a_file_and_stdin_then_tail_what_is_applied(
    nats_server: EmbeddedNats, nc: Client, sqlite_db_url: str, tmp_path: Path
) -> None:
    events = lifecycle(["cli-1"], 5, seed=31)
    half = len(events) // 2
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps(e) + "\n" for e in events[:half]) + "\n")
    url = nats_server.url

    done = await asyncio.to_thread(_ledger, tmp_path, "events", "publish", str(lines), "--nats-url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"published {half} events"
    stdin = "".join(json.dumps(e) + "\n" for e in events)  # the first half again: the stream drops it
    done = await asyncio.to_thread(
        _ledger, tmp_path, "events", "publish", "-", "--nats-url", url, stdin=stdin
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"published {len(events)} events ({half} already in the stream)"

    with open(tmp_path / "tail.out", "wb") as out, open(tmp_path / "tail.err", "wb") as err:
        tail = subprocess.Popen(
            [sys.executable, "-m", "ledger", "events", "tail", "--count", "5", "--nats-url", url],
            cwd=REPO,
            env=cli_env(tmp_path),
            stdout=out,
            stderr=err,
        )
    try:
        await asyncio.sleep(2.0)  # let it subscribe (core NATS: it only sees what comes after)
        ledger = Ledger.open(sqlite_db_url, migrate=False)
        try:
            async with RunningConsumer(nc, ledger, announce=True) as running:
                await wait_for(lambda: running.consumer.handled >= len(events), 30, "every event")
            assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in events)
        finally:
            ledger.close()
        assert await asyncio.to_thread(tail.wait, 30) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    shown = [json.loads(line) for line in (tmp_path / "tail.out").read_text().splitlines()]
    assert len(shown) >= 5  # exactly 5: see test_tail_count_prints_exactly_count_lines
    assert [s["event_id"] for s in shown[:5]] == [e["id"] for e in events[:5]]
    assert {s["outcome"] for s in shown} == {"applied"} and shown[0]["stream_seq"] == 1


async def test_tail_count_prints_exactly_count_lines(
    nats_server: EmbeddedNats, nc: Client, sqlite_db_url: str, tmp_path: Path
) -> None:
    events = lifecycle(["cli-3"], 5, seed=32)
    with open(tmp_path / "tail.out", "wb") as out:
        tail = subprocess.Popen(
            [sys.executable, "-m", "ledger", "events", "tail", "--count", "5", "--nats-url", nats_server.url],
            cwd=REPO,
            env=cli_env(tmp_path),
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        await asyncio.sleep(2.0)
        ledger = Ledger.open(sqlite_db_url, migrate=False)
        try:
            async with RunningConsumer(nc, ledger, announce=True) as running:
                await publish_in_order(nc.jetstream(), events)
                await wait_for(lambda: running.consumer.handled >= len(events), 30, "every event")
        finally:
            ledger.close()
        assert await asyncio.to_thread(tail.wait, 30) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert len((tmp_path / "tail.out").read_text().splitlines()) == 5


async def test_publish_refuses_an_invalid_line(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    bad = make_event("image.pulled", "cli-2", {"id": "img", "size_bytes": 1}, 1)
    bad["data"]["size_bytes"] = -1
    done = await asyncio.to_thread(
        _ledger, tmp_path, "events", "publish", "-", "--nats-url", nats_server.url, stdin=json.dumps(bad)
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "-:1:" in done.stderr and "image.size_bytes cannot be negative, got -1" in done.stderr


async def test_dead_letters_list_show_and_replay_a_corrected_payload(
    nc: Client, sqlite_db_url: str, tmp_path: Path
) -> None:
    host = "cli-dl"
    record = {"id": "i-9", "name": "vm", "state": "Running", "vcpus": 3, "memory_bytes": 2**30}
    broken = make_event("instance.started", host, record, 1)
    broken["data"] = {**record, "vcpus": -3}
    subject = f"ledger.events.{host}.instance.started"
    ledger = Ledger.open(sqlite_db_url, migrate=False)
    try:
        async with RunningConsumer(nc, ledger) as running:
            await nc.jetstream().publish(subject, json.dumps(broken).encode())
            await wait_for(lambda: running.consumer.handled >= 1, 30, "the broken event")
        db = ["--database-url", sqlite_db_url]

        listed = await asyncio.to_thread(_ledger, tmp_path, "events", "dead-letters", "list", "--json", *db)
        assert listed.returncode == 0, listed.stderr
        page = json.loads(listed.stdout)
        assert (page["total"], page["next_after"]) == (1, None)
        [letter] = page["dead_letters"]
        assert letter["reason"] == "event.data: instance.vcpus cannot be negative, got -3"
        assert letter["subject"] == subject and letter["host"] == host and letter["stream_seq"] == 1
        text_list = await asyncio.to_thread(_ledger, tmp_path, "events", "dead-letters", "list", *db)
        assert "instance.vcpus cannot be negative" in text_list.stdout

        dl_id = str(letter["id"])
        shown = await asyncio.to_thread(_ledger, tmp_path, "events", "dead-letters", "show", dl_id, *db)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(json.loads(shown.stdout)["payload"]) == broken

        again = await asyncio.to_thread(_ledger, tmp_path, "events", "dead-letters", "replay", dl_id, *db)
        assert again.returncode == 2 and "still cannot be applied" in again.stderr

        fixed = tmp_path / "fixed.json"
        fixed.write_text(json.dumps({**broken, "data": record}))
        replayed = await asyncio.to_thread(
            _ledger, tmp_path, "events", "dead-letters", "replay", dl_id, "--payload", str(fixed), *db
        )
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.strip() == f"dead letter {dl_id}: applied (instance.started i-9 v1)"
        assert ledger.full_status(host).to_dict()["cpu"]["allocated"] == 3
        assert processed_ids(ledger) == [broken["id"]]
        assert ledger.letters.page() == []
        assert [d.id for d in ledger.letters.page(include_replayed=True)] == [int(dl_id)]
        listed = await asyncio.to_thread(_ledger, tmp_path, "events", "dead-letters", "list", *db)
        assert listed.stdout.strip() == "no dead letters"
        assert ledger.drift() == []
    finally:
        ledger.close()
