"""`ledger serve` on the embedded default samples its own host's VMs: an instance whose record names a
real process as its hypervisor has real usage in the ledger within a few intervals."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from nats.aio.client import Client

from ledger.bus.publisher import publish_event
from ledger.events.contract import make_event
from ledger.store.ledger import Ledger
from tests.service.conftest import ServeFactory
from tests.service.helpers import serve_env, unique, value


async def test_serve_samples_a_running_vm_and_stores_its_usage(
    serve_factory: ServeFactory, tmp_path: Path, burner: subprocess.Popen[str]
) -> None:
    data_dir = tmp_path / "data"
    host = unique("usage")
    env = serve_env(data_dir, host, LEDGER_USAGE_INTERVAL="0.5")
    serve = await asyncio.to_thread(serve_factory, data_dir, env)
    nc = Client()
    await nc.connect(serve.nats_url)
    try:
        record = {"id": "vm-1", "state": "Running", "vcpus": 2, "hypervisor_pid": burner.pid}
        await publish_event(nc.jetstream(), make_event("instance.created", host, record, version=1))
    finally:
        await nc.close()

    ledger = Ledger.open(f"sqlite:///{data_dir / 'ledger.db'}", migrate=False)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            latest = ledger.usage.latest(host).get("vm-1")
            if latest is not None and latest["cpu_vcpus"] is not None:
                break
            assert asyncio.get_running_loop().time() < deadline, serve.log()
            await asyncio.sleep(0.2)
        assert latest["cpu_vcpus"] > 0 and latest["memory_rss_bytes"] > 0  # how much: test_sampler.py
        assert latest["unmeasured_reason"] is None
    finally:
        ledger.close()
    # the sampling process exports the VM, named as cAdvisor names VM metrics
    scraped = serve.scrape()
    assert (value(scraped, "ledger_instance_cpu_seconds_total", host=host, instance="vm-1") or 0) > 0
    assert (value(scraped, "ledger_instance_memory_rss_bytes", host=host, instance="vm-1") or 0) > 0
    assert (value(scraped, "ledger_usage_stored_total") or 0) >= 1
    assert await asyncio.to_thread(serve.stop) == 0
    assert "Traceback" not in serve.log()
