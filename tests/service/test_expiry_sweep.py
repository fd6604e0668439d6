"""`ledger serve` ends holds past their TTL in the background: a fleet search reads hosts without locking
them, so without the sweep a host filled by holds nobody came back for would look full to `candidates` and
`place` until something else locked it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ledger.client import LedgerClient
from tests.service.conftest import ServeFactory
from tests.service.helpers import serve_env, unique

CPU_ONLY = {"network_download_bps": 0, "network_upload_bps": 0, "disk_io_bps": 0}  # no default bandwidth


async def test_serve_sweeps_expired_holds_so_searches_see_the_room_again(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    host = unique("sweep")
    data_dir = tmp_path / "data"
    env = serve_env(data_dir, host, LEDGER_SWEEP_INTERVAL="0.2")
    serve = await asyncio.to_thread(serve_factory, data_dir, env)
    async with await LedgerClient.connect(serve.nats_url, reconnect_forever=False) as client:
        room = (await client.status(host=host, resource="cpu")).available
        hold = await client.validate(
            vcpus=room, host=host, ttl_seconds=1, **CPU_ONLY
        )  # every vCPU the host has
        full = await client.candidates(vcpus=2, **CPU_ONLY)
        assert (full.fitting, full.shortfalls["cpu"]) == (0, 1)

        deadline = asyncio.get_running_loop().time() + 15
        while not (
            found := await client.candidates(vcpus=2, **CPU_ONLY)
        ).candidates:  # only searches: nothing locks
            assert asyncio.get_running_loop().time() < deadline, "the expired hold was never swept"
            await asyncio.sleep(0.1)
        assert [c.host for c in found.candidates] == [host]
        assert (await client.reservation(hold.reservation_id)).status == "expired"
        placed = await client.place(vcpus=room, **CPU_ONLY)
        assert placed.host == host
    assert await asyncio.to_thread(serve.stop) == 0
