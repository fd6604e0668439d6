"""Helpers for the bus tests: a realistic lifecycle, publishing it, replaying it without NATS, and comparing
what two ledgers hold."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from ledger.events import make_event, parse_event, subject_for
from ledger.events.apply import apply_event
from ledger.store import migrate
from ledger.store.journal import processed_events
from ledger.store.ledger import Ledger
from ledger.store.sql import capacities, hosts, images, instances, oci_cache
from ledger.store.sql import volumes as volumes_table

GB, GIB = 10**9, 2**30
Envelope = dict[str, Any]

HOST_CAPACITY = {
    "cpu": {"capacity": 512, "source": "detected"},
    "memory": {"capacity": 4096 * GIB, "source": "detected"},
    "disk": {"capacity": 100_000 * GB, "source": "detected"},
    "network": {"capacity": 12_500_000_000, "source": "configured"},
    "disk_io": {"capacity": 10_000_000_000, "source": "default"},
    "gpu": None,
    "ratios": {"cpu": 2.0},
}


def _instance(iid: str, state: str, vcpus: int, memory_gib: int, overlay_gb: int, net: int) -> dict[str, Any]:
    return {
        "id": iid,
        "name": f"vm-{iid}",
        "state": state,
        "vcpus": vcpus,
        "memory_bytes": memory_gib * GIB,
        "overlay_bytes": overlay_gb * GB,
        "volume_overlay_bytes": GB,
        "network_download_bps": net,
        "network_upload_bps": net // 2,
        "disk_io_bps": 2 * net,
    }


def instance_history(host: str, iid: str, rng: random.Random) -> list[Envelope]:
    """create → start → resize → pause → resume → stop → delete, cut off at a random point so the final
    states differ (some still hold resources, some are stopped, some are tombstones)."""
    v, m, o, n = rng.choice([1, 2, 4]), rng.choice([1, 2, 4]), rng.randint(5, 40), rng.choice([0, 10**8])
    steps: list[tuple[str, dict[str, Any]]] = [
        ("instance.created", _instance(iid, "Created", v, m, o, n)),
        ("instance.started", _instance(iid, "Running", v, m, o, n)),
        ("instance.resized", _instance(iid, "Running", 2 * v, 2 * m, o + 10, 2 * n)),
        ("instance.paused", _instance(iid, "Paused", 2 * v, 2 * m, o + 10, 2 * n)),
        ("instance.resumed", _instance(iid, "Running", 2 * v, 2 * m, o + 10, 2 * n)),
        ("instance.stopped", _instance(iid, "Stopped", 2 * v, 2 * m, o + 10, 2 * n)),
        ("instance.deleted", {"id": iid}),
    ]
    cut = rng.randint(1, len(steps))
    return [make_event(t, host, rec, version) for version, (t, rec) in enumerate(steps[:cut], start=1)]


def volume_history(host: str, vid: str, attach_to: str, rng: random.Random) -> list[Envelope]:
    size = rng.randint(1, 100) * GB
    steps = [
        ("volume.created", {"id": vid, "name": f"data-{vid}", "size_bytes": size, "attached_to": None}),
        ("volume.attached", {"id": vid, "name": f"data-{vid}", "size_bytes": size, "attached_to": attach_to}),
        (
            "volume.resized",
            {"id": vid, "name": f"data-{vid}", "size_bytes": 2 * size, "attached_to": attach_to},
        ),
        ("volume.detached", {"id": vid, "name": f"data-{vid}", "size_bytes": 2 * size, "attached_to": None}),
        ("volume.deleted", {"id": vid}),
    ]
    cut = rng.randint(1, len(steps))
    return [make_event(t, host, rec, version) for version, (t, rec) in enumerate(steps[:cut], start=1)]


def image_history(host: str, image_id: str, rng: random.Random) -> list[Envelope]:
    record = {"id": image_id, "name": f"registry/{image_id}:1", "size_bytes": rng.randint(1, 5) * GB}
    steps = [make_event("image.pulled", host, record, 1)]
    if rng.random() < 0.4:
        steps.append(make_event("image.deleted", host, {"id": image_id}, 2))
    return steps


def lifecycle(
    hosts_: Sequence[str], instances_per_host: int, seed: int, *, shuffle: bool = False
) -> list[Envelope]:
    """A realistic stream: each host's capacity first, then every entity's history interleaved at random
    (each entity's own events in order), or the whole stream shuffled when `shuffle`."""
    rng = random.Random(seed)
    histories: list[list[Envelope]] = []
    head: list[Envelope] = []
    for host in hosts_:
        head.append(make_event("host.capacity", host, HOST_CAPACITY, 1))
        for i in range(instances_per_host):
            histories.append(instance_history(host, f"i-{i}", rng))
        for i in range(max(1, instances_per_host // 3)):
            histories.append(volume_history(host, f"v-{i}", f"i-{i}", rng))
        for i in range(max(1, instances_per_host // 5)):
            histories.append(image_history(host, f"sha256:{i:04x}", rng))
        histories.append(
            [make_event("oci_cache.measured", host, {"total_bytes": k * GB}, k) for k in range(1, 4)]
        )
    stream = list(head)
    cursors = [0] * len(histories)
    live = [i for i, h in enumerate(histories) if h]
    while live:
        pick = rng.choice(live)
        stream.append(histories[pick][cursors[pick]])
        cursors[pick] += 1
        if cursors[pick] == len(histories[pick]):
            live.remove(pick)
    if shuffle:
        rng.shuffle(stream)
    return stream


def payload(envelope: Envelope) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


def subject(envelope: Envelope) -> str:
    return subject_for(envelope["host"], envelope["type"])


async def publish_all(js: Any, envelopes: Iterable[Envelope], *, concurrency: int = 64) -> int:
    """Publish with the event id as Nats-Msg-Id (what the publisher does), many in flight at once."""
    items = list(envelopes)
    count = 0
    for start in range(0, len(items), concurrency):
        chunk = items[start : start + concurrency]
        acks = await asyncio.gather(
            *(js.publish(subject(e), payload(e), headers={"Nats-Msg-Id": e["id"]}) for e in chunk)
        )
        count += sum(1 for a in acks if not a.duplicate)
    return count


async def publish_in_order(js: Any, envelopes: Iterable[Envelope]) -> None:
    for e in envelopes:
        await js.publish(subject(e), payload(e), headers={"Nats-Msg-Id": e["id"]})


def new_sqlite_url(directory: Path, name: str = "ledger.db") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / name}"
    migrate.upgrade(url)
    return url


def replay(envelopes: Iterable[Envelope], url: str) -> Ledger:
    """The same events applied straight to a fresh ledger, no NATS: what the consumer must end up with."""
    ledger = Ledger.open(url, migrate=False)
    for seq, e in enumerate(envelopes, start=1):
        apply_event(ledger, parse_event(payload(e), subject(e)), seq)
    return ledger


# times, and the host row's revision (it counts the transactions that wrote the row, not what they wrote)
_VOLATILE = {"created_at", "updated_at", "processed_at", "next_expiry", "revision"}


_TOMBSTONE_KEYS = {"host_id", "instance_id", "volume_id", "image_id", "deleted", "active", "version"}


def _rows(
    ledger: Ledger, table: Any, order: Sequence[str], *, full_tombstones: bool = True
) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(table).order_by(*(table.c[c] for c in order))).mappings().all()
    found = [{k: v for k, v in r.items() if k not in _VOLATILE} for r in rows]
    if not full_tombstones:  # a tombstone's leftover fields depend on which version preceded the delete
        found = [
            {k: v for k, v in r.items() if k in _TOMBSTONE_KEYS} if r.get("deleted") else r for r in found
        ]
    return found


def snapshot(ledger: Ledger, host_ids: Iterable[str], *, full_tombstones: bool = True) -> dict[str, Any]:
    """Everything that must match between the consumer's ledger and the replay: each host's full status
    and the contents of the record tables (timestamps aside). With `full_tombstones=False` a deleted
    entity's row is compared by id, version and flags only
    (see test_tombstone_rows_do_not_depend_on_order)."""
    full = full_tombstones
    return {
        "status": {h: ledger.full_status(h).to_dict() for h in sorted(host_ids)},
        "hosts": _rows(ledger, hosts, ["host_id"]),
        "capacities": _rows(ledger, capacities, ["host_id", "resource"]),
        "instances": _rows(ledger, instances, ["host_id", "instance_id"], full_tombstones=full),
        "volumes": _rows(ledger, volumes_table, ["host_id", "volume_id"], full_tombstones=full),
        "images": _rows(ledger, images, ["host_id", "image_id"], full_tombstones=full),
        "oci_cache": _rows(ledger, oci_cache, ["host_id"], full_tombstones=full),
    }


def processed_ids(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(processed_events.c.event_id)).scalars())


def processed_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(processed_events)).scalar_one())


def raw_count(url: str, table: str) -> int:
    """A count through a short-lived engine (the consumer may be another process)."""
    ledger = Ledger.open(url, migrate=False)
    try:
        with ledger.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        ledger.close()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for `ledger` child processes; a `ledger serve` among them serves its metrics on
    any free port, so tests running side by side never fight over the default one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "OVERSUB_"))}
    env.update(
        LEDGER_DATA_DIR=str(tmp_path),
        LEDGER_HOST_ID="bus-test-host",
        LEDGER_METRICS_ADDR="127.0.0.1:0",
        PYTHONUNBUFFERED="1",
    )
    return env


class RunningConsumer:
    """An in-process EventConsumer task, stopped (its batch finished) on exit; records every outcome."""

    def __init__(self, nc: Any, ledger: Ledger, **options: Any) -> None:
        from ledger.bus.consumer import EventConsumer, Outcome

        self.outcomes: list[Outcome] = []
        options.setdefault("announce", False)
        options.setdefault("fetch_timeout", 0.3)
        self.consumer = EventConsumer(nc, ledger, on_outcome=self.outcomes.append, **options)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningConsumer:
        await self.consumer.start()
        self.task = asyncio.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    def by_outcome(self, outcome: str) -> list[Any]:
        return [o for o in self.outcomes if o.outcome == outcome]
