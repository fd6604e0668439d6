"""Losing NATS while running: one log line per change of state, never one per attempt; a connection that
closes for good ends the service with a non-zero exit instead of leaving it deaf to every request."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from ledger.bus.connect import backoff_s, connect
from ledger.bus.embedded import EmbeddedNats
from ledger.client import LedgerClient
from ledger.config import load_settings
from tests.service.conftest import ServeFactory
from tests.service.helpers import base_env, serve_env, unique

AUTH = 'authorization {{ user: "svc", password: "{password}" }}\n'


def _reload(server: EmbeddedNats, config: Path, password: str) -> None:
    config.write_text(AUTH.format(password=password))
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)  # the server drops clients it no longer accepts


async def test_credentials_revoked_then_restored(serve_factory: ServeFactory, tmp_path: Path) -> None:
    config = tmp_path / "nats.conf"
    config.write_text(AUTH.format(password="first-secret"))
    server = EmbeddedNats(tmp_path / "nats-store", extra_args=["-c", str(config)])
    server.start()
    try:
        data_dir = tmp_path / "data"
        host = unique("revoked")
        credentials = {"LEDGER_NATS_USER": "svc", "LEDGER_NATS_PASSWORD": "first-secret"}
        env = serve_env(data_dir, host, LEDGER_NATS_URL=server.url, **credentials)
        serve = await asyncio.to_thread(serve_factory, data_dir, env)

        _reload(server, config, "second-secret")
        await asyncio.sleep(6.0)  # a dozen attempts or so, backing off
        log = serve.log()
        assert log.count("nats: lost") == 1, log
        assert log.count("Authorization Violation") == 1, log  # said once, while it keeps retrying
        assert "still down" in log and "next try in" in log

        _reload(server, config, "first-secret")
        deadline = time.monotonic() + 15
        while "nats: back at" not in serve.log() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert "nats: back at" in serve.log(), serve.log()
        client_env = {**base_env(), **credentials, "LEDGER_DATA_DIR": str(tmp_path / "c")}
        settings = load_settings(environ=client_env)
        async with await LedgerClient.connect(server.url, settings, reconnect_forever=False) as client:
            assert await client.hosts() == [host]
        assert await asyncio.to_thread(serve.stop) == 0
        assert "first-secret" not in serve.log() and "Traceback" not in serve.log()
    finally:
        server.stop()


async def test_connection_closed_for_good_is_reported_once(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    closed = asyncio.Event()
    nc = await connect(nats_server.url, None, on_closed=closed.set)
    with caplog.at_level(logging.INFO, logger="ledger.nats"):
        # the server answers a control line over its 4 KiB limit with -ERR, and nats-py then gives up
        await nc.publish("x" * 5000, b"")
        await asyncio.wait_for(closed.wait(), timeout=10)
    lines = [record.getMessage() for record in caplog.records if record.name == "ledger.nats"]
    assert len(lines) == 1 and "closed for good" in lines[0] and "control line" in lines[0], lines
    assert nc.is_closed


def test_backoff_grows_to_its_cap() -> None:
    waits = [backoff_s(attempt) for attempt in range(10)]
    assert waits[0] == 0.0 and waits[1] == 0.25 and waits[2] == 0.5
    assert waits == sorted(waits) and waits[-1] == 5.0
    assert backoff_s(9, jitter=0.2) == pytest.approx(6.0)
