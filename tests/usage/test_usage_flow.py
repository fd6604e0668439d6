"""Samples travel the way they do in production: a sampling loop publishes on `ledger.usage.<host>`, the
service's ingest stores them; what cannot be used is dropped and counted by reason, and acknowledged."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import USAGE_DURABLE, USAGE_STREAM, usage_subject
from ledger.bus.usage import UsageIngest, ensure_usage_stream
from ledger.core.records import InstanceRecord
from ledger.core.resources import ResourceType
from ledger.store import migrate
from ledger.store.ledger import Ledger
from ledger.usage.reporting import SamplingLoop
from ledger.usage.sampler import Sampler
from tests.conftest import capacities


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Ledger]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    opened = Ledger.open(url, migrate=False)
    opened.register_host("h1", capacities(cpu=8), {r: 4.0 for r in ResourceType})
    yield opened
    opened.close()


async def wait_for(condition: object, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_sampled_usage_reaches_the_ledger_and_bad_reports_are_counted(
    nats_server: EmbeddedNats, book: Ledger, burner: subprocess.Popen[str]
) -> None:
    book.apply_instance("h1", InstanceRecord(id="vm-1", state="Running", vcpus=2, hypervisor_pid=burner.pid))
    book.apply_instance("h1", InstanceRecord(id="vm-2", state="Running", vcpus=1))  # no pid: unmeasured
    nc = Client()
    await nc.connect(nats_server.url)
    stop = asyncio.Event()
    try:
        ingest = UsageIngest(nc, book, retention_days=14)
        await ingest.start()
        js = nc.jetstream()
        sampling = SamplingLoop(
            lambda: js,
            Sampler("h1"),
            lambda: asyncio.to_thread(book.running_instances, "h1"),
            interval_s=0.5,
        )
        tasks = [asyncio.create_task(ingest.run(stop)), asyncio.create_task(sampling.run(stop))]

        def measured() -> bool:
            vm = book.usage.latest("h1").get("vm-1")
            return vm is not None and vm["cpu_vcpus"] is not None

        await wait_for(measured)
        latest = book.usage.latest("h1")
        assert latest["vm-1"]["cpu_vcpus"] > 0  # how much: test_sampler.py
        assert latest["vm-2"]["unmeasured_reason"] == "its instance record has no hypervisor_pid"

        js = nc.jetstream()
        await js.publish(usage_subject("h1"), b"{not json")
        await js.publish(
            usage_subject("h1"), b'{"host": "h1", "at": "2026-01-01T00:00:00Z", "interval_s": -1}'
        )
        await js.publish(
            usage_subject("nowhere"), b'{"host": "nowhere", "at": "2099-01-01T00:00:00Z", "interval_s": 10}'
        )
        await wait_for(lambda: sum(ingest.drops.counts.values()) >= 3)
        assert ingest.drops.counts["malformed"] == 2
        assert ingest.drops.counts["unknown_host"] == 1
        stop.set()
        await asyncio.gather(*tasks)
        info = await js.consumer_info(USAGE_STREAM, USAGE_DURABLE)
        assert info.num_ack_pending == 0  # dropped reports are acknowledged, never redelivered
        assert sampling.published >= 2 and sampling.last_problem is None
    finally:
        stop.set()
        await nc.close()


async def test_the_usage_stream_is_bounded_in_age_and_size(nats_server: EmbeddedNats) -> None:
    nc = Client()
    await nc.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_usage_stream(js)
        config = (await js.stream_info(USAGE_STREAM)).config
        assert config.max_age == 3600.0 and config.max_bytes == 256 * 2**20
        assert config.discard == DiscardPolicy.OLD
    finally:
        await nc.close()
