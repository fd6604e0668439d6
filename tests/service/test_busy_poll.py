"""`ledger serve` polls for a bounded window after a lone reply, and not at all once idle: its CPU is measured
from /proc, as an operator's `top` would see it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ledger.client import LedgerClient
from tests.service.conftest import ServeFactory
from tests.service.helpers import serve_env, unique

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def test_serve_polls_only_for_its_window_after_each_lone_reply(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    host = unique("poll")
    data_dir = tmp_path / "data"
    window_us, requests = 10_000, 30  # the longest window: 0.3 s of polling in all
    env = serve_env(data_dir, host, LEDGER_BUSY_POLL_US=str(window_us))
    serve = await asyncio.to_thread(serve_factory, data_dir, env)
    assert f"busy_poll_us={window_us}" in serve.log()
    window = window_us / 1e6
    async with await LedgerClient.connect(serve.nats_url, reconnect_forever=False) as client:
        await client.validate(vcpus=1)  # warm up
        await asyncio.sleep(1.0)
        before = cpu_seconds(serve.pid)
        for _ in range(requests):
            await client.validate(vcpus=0, memory_bytes=1)
            await asyncio.sleep(3 * window)  # a pause longer than the window: it polls, then sleeps
        polled = cpu_seconds(serve.pid) - before

        before = cpu_seconds(serve.pid)
        await asyncio.sleep(1.0)
        idle = cpu_seconds(serve.pid) - before

    # each lone reply is followed by a window of polling (a third of it is enough to prove it polls, on a
    # busy machine); once idle, nothing polls (a few timers tick)
    assert polled >= requests * window / 3, f"{polled:.3f} s of CPU: it did not poll"
    assert polled <= requests * (window + 0.015) + 0.05, f"{polled:.3f} s of CPU: it polled too long"
    assert idle <= 0.06, f"{idle:.3f} s of CPU in 1 s idle: it kept polling"
    assert await asyncio.to_thread(serve.stop) == 0
