"""LedgerClient's ergonomics (issue 17, item 10): typed results for status, release, running_instances,
defaults and image_pull_check, and the NATS URL found from the data dir's serve.json; against a real service
on a real NATS server."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError
from datetime import datetime
from pathlib import Path

import pytest

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.service import LedgerService
from ledger.client import BandwidthDefaults, ImagePullCheck, LedgerClient, nats_url_for
from ledger.config import load_settings
from ledger.core.capacity import ResourceStatus
from ledger.core.errors import ConfigError, InsufficientResources, InvalidRequest, NotFound
from ledger.core.records import InstanceRecord
from ledger.core.resources import ResourceType, Source
from ledger.core.results import FullStatus, InstanceUtilizationInfo, ReservationInfo
from ledger.store import migrate
from ledger.store.ledger import Ledger
from tests.conftest import capacities

GIB = 2**30
HOST = "typed"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[str, Ledger]]:
    """An in-process LedgerService for host `typed` (16 vCPUs, 1 TB disk) with one Running instance."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False)
    ledger.register_host(HOST, capacities(), {}, labels={"zone": "a"})
    record = InstanceRecord(
        id="vm-1",
        state="Running",
        name="one",
        vcpus=2,
        memory_bytes=GIB,
        hypervisor_pid=4242,
        tap_device="tap0",
    )
    ledger.apply_instance(HOST, record, version=1)
    server = EmbeddedNats(tmp_path / "nats")
    nats_url = await asyncio.to_thread(server.start)
    nc = await connect(nats_url, name="typed-test")
    running = LedgerService(nc, ledger, default_host=HOST)
    await running.start()
    try:
        yield nats_url, ledger
    finally:
        await running.stop()
        await nc.close()
        ledger.close()
        await asyncio.to_thread(server.stop)


async def test_status_is_a_full_status_equal_to_the_databases(service: tuple[str, Ledger]) -> None:
    url, ledger = service
    async with await LedgerClient.connect(url) as client:
        status = await client.status()
        cpu = await client.status(resource="cpu")
        page = await client.status(HOST, limit=0)
    assert isinstance(status, FullStatus)
    assert status == ledger.full_status(HOST)
    assert status.to_dict() == ledger.full_status(HOST).to_dict()
    assert status.labels == {"zone": "a"}
    assert [a.instance_id for a in status.allocations] == ["vm-1"]
    assert status.resources[ResourceType.CPU].allocated == 2
    assert cpu == ResourceStatus(ResourceType.CPU, 16, 64, 2, 0, 62, 4.0, Source.DETECTED)
    assert (page.allocations, page.allocations_total) == ([], 1)
    with pytest.raises(FrozenInstanceError):
        status.host_id = "other"  # type: ignore[misc]


async def test_release_is_a_reservation_info(service: tuple[str, Ledger]) -> None:
    url, _ = service
    async with await LedgerClient.connect(url) as client:
        hold = await client.validate(vcpus=1)
        released = await client.release(hold.reservation_id)
        again = await client.release(hold.reservation_id)
        with pytest.raises(NotFound):
            await client.release("0" * 32)
    assert isinstance(released, ReservationInfo)
    assert (released.reservation_id, released.host_id, released.status) == (
        hold.reservation_id,
        HOST,
        "released",
    )
    assert isinstance(released.created_at, datetime) and released.ended_at is not None
    assert released.instance_id is None
    assert again == released


async def test_a_reservation_is_found_by_id_or_by_its_key_as_it_is_now(service: tuple[str, Ledger]) -> None:
    url, ledger = service
    async with await LedgerClient.connect(url) as client:
        hold = await client.validate(vcpus=3, memory_bytes=GIB, idempotency_key="vm-7")
        by_id = await client.reservation(hold.reservation_id)
        by_key = await client.reservation(idempotency_key="vm-7", host=HOST)
        await client.release(hold.reservation_id)
        after = await client.reservation(idempotency_key="vm-7")
        with pytest.raises(NotFound, match="no reservation on host 'typed' with idempotency_key 'vm-8'"):
            await client.reservation(idempotency_key="vm-8")
        with pytest.raises(InvalidRequest, match="not both"):
            await client.reservation(hold.reservation_id, idempotency_key="vm-7")
        with pytest.raises(InvalidRequest, match="reservation_id is required"):
            await client.reservation()
    assert by_id == by_key
    assert after == ledger.reservation_by_key(HOST, "vm-7") == ledger.reservation(hold.reservation_id)
    assert (by_id.status, by_id.idempotency_key, by_id.ended_at) == ("held", "vm-7", None)
    assert by_id.charge is not None and (by_id.charge.vcpus, by_id.charge.memory_bytes) == (3, GIB)
    assert by_id.charge.defaulted == ("network_download_bps", "network_upload_bps", "disk_io_bps")
    assert (after.status, after.reservation_id) == ("released", hold.reservation_id)


async def test_running_instances_are_instance_utilization_infos(service: tuple[str, Ledger]) -> None:
    url, _ = service
    async with await LedgerClient.connect(url) as client:
        running = await client.running_instances()
    assert running == [InstanceUtilizationInfo("vm-1", "one", 4242, "tap0", 2, GIB)]


async def test_defaults_and_the_image_pull_check_are_typed(service: tuple[str, Ledger]) -> None:
    url, _ = service
    async with await LedgerClient.connect(url) as client:
        defaults = await client.defaults(4)
        pull = await client.image_pull_check()
    # 4 of 16 vCPUs: a quarter of the 10 Gbps link each way and of 1 GB/s disk I/O, burst 4x that
    assert defaults == BandwidthDefaults(HOST, 4, 312_500_000, 312_500_000, 250_000_000, 1_000_000_000)
    assert pull == ImagePullCheck(HOST, 10**12, 0, int(10**12 * 0.2))


async def test_a_refused_image_pull_raises(service: tuple[str, Ledger]) -> None:
    url, ledger = service
    ledger.register_host("small", capacities(disk=4 * GIB), {})
    async with await LedgerClient.connect(url) as client:
        with pytest.raises(InsufficientResources, match="image pull"):
            await client.image_pull_check("small")


async def test_connect_without_a_url_uses_the_running_serve_of_the_data_dir(
    service: tuple[str, Ledger], tmp_path: Path
) -> None:
    url, _ = service
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # what `ledger serve` writes while it runs (its pid must be alive: this process stands in for it)
    (data_dir / "serve.json").write_text(json.dumps({"pid": os.getpid(), "nats_url": url, "host": HOST}))
    settings = load_settings(environ={"LEDGER_DATA_DIR": str(data_dir)})
    assert nats_url_for(settings) == url
    async with await LedgerClient.connect(settings=settings) as client:
        assert (await client.status()).host_id == HOST


async def test_connect_without_a_url_or_a_running_serve_says_what_to_do(tmp_path: Path) -> None:
    settings = load_settings(environ={"LEDGER_DATA_DIR": str(tmp_path)})
    with pytest.raises(
        ConfigError, match="no NATS URL: pass one, set LEDGER_NATS_URL, or start `ledger serve`"
    ):
        await LedgerClient.connect(settings=settings)
    (tmp_path / "serve.json").write_text(json.dumps({"pid": 2**22 + 7, "nats_url": "nats://127.0.0.1:1"}))
    with pytest.raises(ConfigError):  # a serve.json left behind by a process that is gone
        nats_url_for(settings)


async def test_the_configured_url_wins_over_serve_json(tmp_path: Path) -> None:
    (tmp_path / "serve.json").write_text(json.dumps({"pid": os.getpid(), "nats_url": "nats://a:4222"}))
    settings = load_settings(environ={"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_NATS_URL": "nats://b:4222"})
    assert nats_url_for(settings) == "nats://b:4222"
