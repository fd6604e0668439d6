"""One client OS process of the service race (tests/service/test_races_service.py).

It opens its own NATS connection, waits at a barrier shared with its siblings, then runs a few lanes (one
request in flight each) that send a seeded random mix to `ledger.v1.validate` and `ledger.v1.release` for
a fixed time. It judges nothing: it records every request and what came back (the parsed reply, the raw
text when it is not JSON, how many replies arrived, when it was sent and answered on the system-wide
monotonic clock) and hands the records to the test, which judges them all together.

Replies come to one inbox subscription of its own instead of `nc.request`, so a request answered twice (or
by a no-responders status) is seen rather than silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

MIB, GIB, GB = 2**20, 2**30, 10**9
MBPS = 10**6  # bytes per second
REQUEST_TIMEOUT = 10.0
TTL_SECONDS = 600  # no hold may expire while a test runs
SHARED_KEYS = 6  # idempotency keys every process sends, with one body per key

# (operation, weight): the mix each lane draws from
OPERATIONS = (
    ("fit", 30),
    ("too_large", 8),
    ("gpu", 10),
    ("keyed", 14),
    ("reuse", 6),
    ("shared", 12),
    ("release", 20),
)


def shared_key(host: str, n: int) -> str:
    return f"{host}-shared-{n}"


def shared_body(host: str, n: int) -> dict[str, Any]:
    """The one body every process sends with shared key `n` (bandwidths unstated: charged the default)."""
    return {
        "host": host,
        "vcpus": 1,
        "memory_bytes": (n % 3 + 1) * 512 * MIB,
        "disk_bytes": (n + 1) * GB,
        "idempotency_key": shared_key(host, n),
        "ttl_seconds": TTL_SECONDS,
    }


class Connection:
    """Requests over one NATS connection, each answered on its own subject under one inbox."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.waiting: dict[str, asyncio.Future[Msg]] = {}
        self.replies: Counter[str] = Counter()
        self.next_token = 0

    async def subscribe(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        await self.nc.flush()

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        self.replies[token] += 1
        future = self.waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the record of it (reply, raw text or error, times, token)."""
        self.next_token += 1
        token = str(self.next_token)
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        record: dict[str, Any] = {"endpoint": endpoint, "body": body, "token": token}
        record["t0"] = time.monotonic()
        await self.nc.publish(
            f"ledger.v1.{endpoint}", json.dumps(body).encode(), reply=f"{self.inbox}.{token}"
        )
        try:
            msg = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            self.waiting.pop(token, None)
            record.update(t1=time.monotonic(), reply=None, error=f"no reply within {REQUEST_TIMEOUT} s")
            return record
        record["t1"] = time.monotonic()
        record["header"] = (msg.headers or {}).get("Nats-Service-Error-Code")
        text = msg.data.decode(errors="replace")
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
            record.update(reply=reply, error=None)
        else:
            record.update(reply=None, error=f"not a JSON reply: {text[:300]!r} headers={msg.headers}")
        return record


class Lane:
    """One request in flight at a time; remembers its grants so it can retry, reuse and release them."""

    def __init__(self, conn: Connection, name: str, host: str, rng: random.Random) -> None:
        self.conn = conn
        self.name = name
        self.host = host
        self.rng = rng
        self.records: list[dict[str, Any]] = []
        self.held: list[tuple[str, dict[str, Any]]] = []  # (reservation id, body) of grants not released
        self.keys: dict[str, tuple[str, dict[str, Any]]] = {}  # own key → (reservation id, granted body)
        self.next_key = 0

    async def run(self, deadline: float) -> list[dict[str, Any]]:
        names = [name for name, _ in OPERATIONS]
        weights = [weight for _, weight in OPERATIONS]
        while time.monotonic() < deadline:
            await getattr(self, self.rng.choices(names, weights)[0])()
        return self.records

    async def call(self, op: str, endpoint: str, body: dict[str, Any], **meta: Any) -> dict[str, Any] | None:
        """Send, record; the reply if it was a grant made by this very request (not a replay)."""
        record = await self.conn.request(endpoint, body)
        record.update(lane=self.name, op=op, **meta)
        self.records.append(record)
        reply = record["reply"]
        if endpoint == "validate" and reply and reply["ok"] and not reply["replayed"]:
            self.held.append((reply["reservation_id"], body))
            return dict(reply)
        return None

    def fit_body(self) -> dict[str, Any]:
        """A request that fits an empty host, with its bandwidths stated, unstated, or some of each."""
        rng = self.rng
        body: dict[str, Any] = {
            "host": self.host,
            "vcpus": rng.choice((1, 1, 2)),
            "memory_bytes": rng.choice((256 * MIB, 512 * MIB, GIB, 2 * GIB)),
            "disk_bytes": rng.choice((1, 2, 5, 10)) * GB,
            "ttl_seconds": TTL_SECONDS,
        }
        stated = rng.choice(("all", "none", "some"))
        if stated in ("all", "some"):
            body["network_download_bps"] = rng.choice((0, 1, 10, 40)) * MBPS
        if stated == "all":
            body["network_upload_bps"] = rng.choice((0, 5, 25)) * MBPS
            body["disk_io_bps"] = rng.choice((0, 50, 200)) * MBPS
        return body

    async def fit(self) -> None:
        await self.call("fit", "validate", self.fit_body())

    async def too_large(self) -> None:
        body = self.fit_body()
        what = self.rng.choice(("vcpus", "memory_bytes", "disk_bytes", "network_download_bps"))
        body[what] = {
            "vcpus": self.rng.randint(9, 64),
            "memory_bytes": self.rng.randint(17, 64) * GIB,
            "disk_bytes": self.rng.randint(101, 1000) * GB,
            "network_download_bps": self.rng.randint(251, 1000) * MBPS,
        }[what]
        await self.call("too_large", "validate", body)

    async def gpu(self) -> None:
        body = self.fit_body()
        body.update(vcpus=1, needs_gpu=True)
        await self.call("gpu", "validate", body)

    async def keyed(self) -> None:
        """A new key, then the very same request again once or twice: a retry after a lost reply."""
        self.next_key += 1
        key = f"{self.name}-key-{self.next_key}"
        body = {**self.fit_body(), "idempotency_key": key}
        granted = await self.call("keyed", "validate", body)
        for _ in range(self.rng.randint(1, 2)):
            granted = await self.call("retry", "validate", body) or granted
        if granted is not None:
            self.keys[key] = (granted["reservation_id"], body)

    async def reuse(self) -> None:
        """A key that holds a reservation, sent with other amounts: a conflict."""
        if not self.keys:
            return await self.fit()
        key = self.rng.choice(sorted(self.keys))
        reservation_id, body = self.keys[key]
        other = dict(body)
        if self.rng.random() < 0.5:
            other["vcpus"] = body["vcpus"] + 1
        else:
            other["memory_bytes"] = body["memory_bytes"] + MIB
        await self.call("reuse", "validate", other, reservation_id=reservation_id)
        return None

    async def shared(self) -> None:
        """A key every process sends: whoever is first holds it (and may release it), the rest replay."""
        n = self.rng.randrange(SHARED_KEYS)
        await self.call("shared", "validate", shared_body(self.host, n))

    async def release(self) -> None:
        if not self.held:
            return await self.fit()
        reservation_id, body = self.held.pop(self.rng.randrange(len(self.held)))
        await self.call("release", "release", {"reservation_id": reservation_id})
        if self.rng.random() < 0.2:
            await self.call("release_again", "release", {"reservation_id": reservation_id})
        if "idempotency_key" in body:  # a retry after the release: the same reservation, nothing held
            await self.call("after_release", "validate", body, reservation_id=reservation_id)
        return None


async def _race(url: str, name: str, host: str, seed: int, duration: float, lanes: int, barrier: Any) -> Any:
    nc = await nats.connect(url, name=name, connect_timeout=5, allow_reconnect=False)
    conn = Connection(nc)
    try:
        await conn.subscribe()
        await asyncio.to_thread(barrier.wait, 60)
        deadline = time.monotonic() + duration
        crews = [Lane(conn, f"{name}l{i}", host, random.Random(f"{seed}-{i}")) for i in range(lanes)]
        done = await asyncio.gather(*(lane.run(deadline) for lane in crews))
    finally:
        await nc.drain()  # handles what is still buffered: a late second reply is counted
    records = [record for lane_records in done for record in lane_records]
    for record in records:
        record["replies"] = conn.replies[record["token"]]
    return records


def run(
    url: str, name: str, host: str, seed: int, duration: float, lanes: int, barrier: Any, results: Any
) -> None:
    """The process's target: the records of every request it sent, put on `results` as (name, records)."""
    results.put((name, asyncio.run(_race(url, name, host, seed, duration, lanes, barrier))))
