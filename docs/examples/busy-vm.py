"""A stand-in VM for trying usage sampling (README, "What the VMs really use"): it starts a process that keeps
one core busy, publishes `instance.created` for it as a Running instance of this host with that process as
its hypervisor, and waits. On Ctrl-C or SIGTERM it publishes `instance.deleted` and stops the process.

    python docs/examples/busy-vm.py &      # with `ledger serve` running on this data dir (make run)

It uses only the public client: `LedgerClient.connect()` finds the running service from the data dir.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from ledger.client import LedgerClient
from ledger.config import load_settings
from ledger.events import make_event

BURN = "while True:\n    pass\n"


async def main() -> None:
    host = load_settings().host_id
    hypervisor = subprocess.Popen([sys.executable, "-c", BURN])
    version = time.time_ns() // 1_000_000  # rises across runs, as the contract asks
    record = {"id": "vm-busy", "name": "busy", "vcpus": 1, "memory_bytes": 2**30, "state": "Running"}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with await LedgerClient.connect() as client:
            created = {**record, "hypervisor_pid": hypervisor.pid}
            await client.publish_event(make_event("instance.created", host, created, version))
            print(f"vm-busy is Running on {host}, hypervisor pid {hypervisor.pid}", flush=True)
            await stop.wait()
            await client.publish_event(make_event("instance.deleted", host, {"id": "vm-busy"}, version + 1))
    finally:
        hypervisor.kill()
        hypervisor.wait()


if __name__ == "__main__":
    asyncio.run(main())
