"""`ledger serve` on the embedded default (SQLite + embedded NATS), driven only through NATS: every endpoint,
lifecycle events consuming a reservation, the micro-service discovery subjects, the CLI through the service,
clean refusals, JSON logs, and a status that matches what the core computes on the same SQLite file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoServersError

from ledger.client import LedgerClient
from ledger.config import EMBEDDED_BUSY_POLL_US
from ledger.core.errors import Conflict, InsufficientResources, NotFound
from ledger.core.resources import ResourceType
from ledger.events.contract import make_event
from ledger.store.ledger import Ledger
from tests.service.conftest import ServeFactory
from tests.service.helpers import (
    GB,
    GIB,
    base_env,
    gather_replies,
    raw,
    refusal_of,
    reply_of,
    run_cli,
    serve_env,
    unique,
)

ENDPOINTS = (
    "validate",
    "release",
    "status",
    "can_allocate",
    "defaults",
    "image_pull_check",
    "hosts",
    "candidates",
    "place",
    "running_instances",
    "reservation",
)


def _instance(iid: str, reservation_id: str | None, **amounts: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": iid, "name": f"vm-{iid}", "state": "Running", **amounts}
    if reservation_id:
        record["reservation_id"] = reservation_id
    return record


async def _wait_status(
    client: LedgerClient, predicate: Any, what: str, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = (await client.status()).to_dict()
        if predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {json.dumps(status)[:2000]}")
        await asyncio.sleep(0.1)


async def test_every_endpoint_events_and_core_agree(  # noqa: PLR0915 - one story, start to finish
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    host = unique("svc")
    data_dir = tmp_path / "data"
    serve = await asyncio.to_thread(
        serve_factory, data_dir, serve_env(data_dir, host), "--log-format", "json"
    )
    assert serve.info["host"] == host and serve.info["pid"] == serve.pid
    assert not serve.nats_url.endswith(":4222")

    client = await LedgerClient.connect(serve.nats_url, reconnect_forever=False)
    try:
        nc = client.nc
        assert await client.hosts() == [host]

        # status before anything: the configured capacities and the default ratios
        status = (await client.status()).to_dict()
        cpu = status["cpu"]
        assert status["host"] == host
        assert (cpu["capacity"], cpu["effective_limit"], cpu["oversub_ratio"]) == (8, 32, 4.0)
        assert (cpu["allocated"], cpu["pending"], cpu["available"]) == (0, 0, 32)
        assert status["memory"]["capacity"] == 16 * GIB
        assert status["disk"]["capacity"] == 100 * GB
        assert status["network"]["capacity"] == 125_000_000
        assert status["allocations"] == []
        one = (await client.status(resource="cpu")).to_dict()
        assert one == cpu

        # validate = reserve; idempotent replays; a different request under the same key conflicts
        a = await client.validate(vcpus=2, memory_bytes=GIB, disk_bytes=10 * GB, idempotency_key="vm-a")
        assert (a.host, a.status, a.replayed, a.idempotency_key) == (host, "held", False, "vm-a")
        again = await client.validate(vcpus=2, memory_bytes=GIB, disk_bytes=10 * GB, idempotency_key="vm-a")
        assert again.reservation_id == a.reservation_id and again.replayed
        with pytest.raises(Conflict) as conflict:
            await client.validate(vcpus=3, idempotency_key="vm-a")
        assert conflict.value.details["reservation_id"] == a.reservation_id
        b = await client.validate(vcpus=3, memory_bytes=2 * GIB)
        c = await client.validate(vcpus=1, ttl_seconds=3600)
        status = (await client.status()).to_dict()
        assert (status["cpu"]["allocated"], status["cpu"]["pending"]) == (0, 6)
        assert status["memory"]["pending"] == 3 * GIB and status["disk"]["pending"] == 10 * GB

        # release: once for real, again says how it ended; an unknown id is not_found
        released = await client.release(b.reservation_id)
        assert released.status == "released" and released.reservation_id == b.reservation_id
        assert (await client.release(b.reservation_id)).status == "released"
        with pytest.raises(NotFound):
            await client.release("no-such-reservation")
        refusal_of(await raw(nc, "release", {"reservation_id": "nope"}), "not_found", "404")

        # can_allocate, defaults, image_pull_check
        assert await client.can_allocate("cpu", 29)
        assert not await client.can_allocate("cpu", 30)
        assert await client.can_allocate("memory", 15 * GIB)
        defaults = asdict(await client.defaults(4))
        assert defaults == {
            "host": host,
            "vcpus": 4,
            "network_download_bps": 62_500_000,  # half the vCPUs → half the 125 MB/s uplink
            "network_upload_bps": 62_500_000,
            "disk_io_bps": 500_000_000,
            "disk_io_burst_bps": 2_000_000_000,
        }
        pull = await client.image_pull_check()
        assert pull.image_storage_bytes == 0 and pull.max_image_storage_bytes == 20 * GB

        # lifecycle events: an instance consuming reservation a, another without one, an image
        events = [
            make_event(
                "instance.created",
                host,
                _instance(
                    "i-a",
                    a.reservation_id,
                    vcpus=2,
                    memory_bytes=GIB,
                    overlay_bytes=8 * GB,
                    volume_overlay_bytes=2 * GB,
                ),
                1,
            ),
            make_event(
                "instance.created",
                host,
                _instance("i-b", None, vcpus=4, memory_bytes=2 * GIB, network_download_bps=10**6),
                1,
            ),
            make_event("image.pulled", host, {"id": "sha256:01", "name": "r/img:1", "size_bytes": 2 * GB}, 1),
        ]
        for envelope in events:
            ack = await client.publish_event(envelope)
            assert not ack.duplicate
        status = await _wait_status(
            client,
            lambda s: (
                {x["instance_id"] for x in s["allocations"]} == {"i-a", "i-b"}
                and s["disk_breakdown"]["images_bytes"] == 2 * GB
            ),
            "both instances and the image",
        )
        # a's hold became i-a's allocation (not counted twice); c is still held
        assert (status["cpu"]["allocated"], status["cpu"]["pending"], status["cpu"]["available"]) == (
            6,
            1,
            25,
        )
        assert (status["memory"]["allocated"], status["memory"]["pending"]) == (3 * GIB, 0)
        assert status["disk"]["pending"] == 0
        assert status["disk"]["allocated"] == 12 * GB  # i-a's 10 GB of overlays + the 2 GB image
        assert (await client.image_pull_check()).image_storage_bytes == 2 * GB

        # a refusal through the client and on the wire: seed-style message, structured fields, headers
        with pytest.raises(InsufficientResources) as refused:
            await client.validate(vcpus=26)
        assert refused.value.message == (
            "insufficient CPU: requested 26 vCPUs, but only 25 available (currently allocated: 6, "
            "pending reservations: 1, effective limit: 32 with 4.0x oversubscription)"
        )
        wire = refusal_of(await raw(nc, "validate", {"vcpus": 26}), "insufficient_resources", "409")
        assert {k: wire[k] for k in ("resource", "requested", "available", "allocated", "pending")} == {
            "resource": "cpu",
            "requested": 26,
            "available": 25,
            "allocated": 6,
            "pending": 1,
        }
        assert wire["effective_limit"] == 32 and wire["ratio"] == 4.0 and wire["host"] == host
        unknown = refusal_of(await raw(nc, "status", {"host": "no-such-host"}), "unknown_host", "404")
        assert unknown["host"] == "no-such-host"

        # every good reply is a clean ok
        for endpoint, body in [
            ("status", {}),
            ("hosts", {}),
            ("defaults", {"vcpus": 1}),
            ("can_allocate", {"resource": "disk", "amount": 1}),
            ("image_pull_check", {}),
        ]:
            assert reply_of(await raw(nc, endpoint, body))["ok"] is True

        # the micro-service discovery subjects
        pings = await gather_replies(nc, "$SRV.PING.ledger")
        assert len(pings) == 1 and pings[0]["name"] == "ledger" and pings[0]["type"].endswith("ping_response")
        info = json.loads((await nc.request("$SRV.INFO.ledger", b"", timeout=5)).data)
        subjects = {e["subject"] for e in info["endpoints"]}
        assert subjects == {f"ledger.v1.{name}" for name in ENDPOINTS}
        assert {e["queue_group"] for e in info["endpoints"]} == {"ledger"}
        stats = json.loads((await nc.request("$SRV.STATS.ledger", b"", timeout=5)).data)
        counts = {e["name"]: e["num_requests"] for e in stats["endpoints"]}
        assert counts["validate"] >= 6 and counts["status"] >= 4 and counts["release"] >= 4
        assert all(e["num_errors"] == 0 for e in stats["endpoints"])  # refusals are answers, not errors

        last = (await client.status()).to_dict()
        last_defaults = asdict(await client.defaults(3))
        last_pull = asdict(await client.image_pull_check())
    finally:
        await client.close()

    assert await asyncio.to_thread(serve.stop) == 0
    assert not serve.runtime_path.exists()

    # the core, on the same SQLite file, computes what the service answered
    ledger = Ledger.open(f"sqlite:///{data_dir / 'ledger.db'}", migrate=False)
    try:
        assert ledger.drift() == []
        core = json.loads(json.dumps(ledger.full_status(host).to_dict(), default=str))
        assert core == last
        assert ledger.default_bandwidth(host, 3) == {
            k: v for k, v in last_defaults.items() if k not in {"host", "vcpus"}
        }
        assert ledger.image_pull_check(host) == {k: v for k, v in last_pull.items() if k != "host"}
        assert ledger.status(host, ResourceType.CPU).available >= 25
        assert ledger.reservation(a.reservation_id).status == "consumed"
        assert ledger.reservation(a.reservation_id).instance_id == "i-a"
        assert ledger.reservation(b.reservation_id).status == "released"
        assert ledger.reservation(c.reservation_id).status == "held"
    finally:
        ledger.close()

    # --log-format json: one JSON object a line; the start line names database, nats and host
    lines = [json.loads(line) for line in serve.log().splitlines() if line.strip()]
    assert all(
        isinstance(line, dict) and {"time", "level", "logger", "message"} <= set(line) for line in lines
    )
    start = [line for line in lines if line["message"].startswith("serving host")]
    assert len(start) == 1
    assert start[0]["host"] == host
    assert start[0]["nats"] == serve.nats_url and start[0]["nats_embedded"] is True
    assert start[0]["busy_poll_us"] == EMBEDDED_BUSY_POLL_US  # every caller is on this machine
    assert start[0]["database"] == f"sqlite:///{data_dir / 'ledger.db'}"
    assert lines[-1]["message"] == "stopped cleanly" and lines[-1]["events_handled"] == 3
    assert "Traceback" not in serve.log()


async def test_cli_goes_through_the_service(serve_factory: ServeFactory, tmp_path: Path) -> None:
    host = unique("cli")
    data_dir = tmp_path / "data"
    serve = await asyncio.to_thread(serve_factory, data_dir, serve_env(data_dir, host))
    # The CLI gets another, empty data dir and another host id: whatever it answers came from the service.
    elsewhere = tmp_path / "cli-data"
    env = {**base_env(), "LEDGER_DATA_DIR": str(elsewhere), "LEDGER_HOST_ID": "not-the-served-host"}
    url = serve.nats_url

    done = await asyncio.to_thread(
        run_cli,
        "validate",
        "--vcpus",
        "2",
        "--memory",
        "1GiB",
        "--host",
        host,
        "--json",
        "--nats-url",
        url,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    grant = json.loads(done.stdout)
    assert grant["ok"] is True and grant["host"] == host and grant["status"] == "held"

    done = await asyncio.to_thread(run_cli, "status", "--json", "--host", host, "--nats-url", url, env=env)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["host"] == host and (status["cpu"]["pending"], status["memory"]["pending"]) == (2, GIB)

    async with await LedgerClient.connect(url, reconnect_forever=False) as client:
        assert (await client.status(host=host)).to_dict() == status

    done = await asyncio.to_thread(run_cli, "release", grant["reservation_id"], "--nats-url", url, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{grant['reservation_id']} released"

    # a refusal: exit 3, the seed-style reason on stderr, no traceback
    done = await asyncio.to_thread(
        run_cli, "validate", "--vcpus", "33", "--host", host, "--nats-url", url, env=env
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.startswith("ledger: insufficient CPU: requested 33 vCPUs, but only 32 available")
    assert "Traceback" not in done.stderr and done.stdout == ""
    # unknown host: exit 4
    done = await asyncio.to_thread(run_cli, "status", "--host", "nope", "--nats-url", url, env=env)
    assert done.returncode == 4 and "unknown host" in done.stderr and "Traceback" not in done.stderr

    assert not (elsewhere / "ledger.db").exists(), "the CLI opened a database instead of asking the service"
    assert await asyncio.to_thread(serve.stop) == 0


async def test_a_client_fails_fast_when_no_service_answers(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    """After serve stops, its NATS is gone too: the CLI says unavailable (exit 6), no traceback."""
    data_dir = tmp_path / "data"
    serve = await asyncio.to_thread(serve_factory, data_dir, serve_env(data_dir, unique("gone")))
    url = serve.nats_url
    assert await asyncio.to_thread(serve.stop) == 0
    done = await asyncio.to_thread(run_cli, "status", "--nats-url", url, env=base_env())
    assert done.returncode == 6, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    with pytest.raises((NoServersError, OSError)):
        await nats.connect(url, connect_timeout=1, max_reconnect_attempts=1, allow_reconnect=False)
