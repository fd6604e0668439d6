"""A second `ledger serve` on a data dir whose embedded NATS server is running exits at once with a message
that says what to do, and the first goes on serving untouched (same serve.json, still answering)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.cli.exits import EXIT_ALREADY_RUNNING
from ledger.client import LedgerClient
from tests.service.conftest import ServeFactory
from tests.service.helpers import ServeProcess, serve_env, unique


async def test_a_second_serve_on_one_data_dir_is_refused(serve_factory: ServeFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = serve_env(data_dir, unique("one-serve"))
    first = serve_factory(data_dir, env)
    runtime = first.runtime_path.read_text()

    second = ServeProcess(tmp_path / "second", env)  # its own log dir; LEDGER_DATA_DIR is the first's
    try:
        with pytest.raises(AssertionError, match=f"ledger serve exited with {EXIT_ALREADY_RUNNING}"):
            second.start(timeout=60)
    finally:
        second.kill()  # if it did start (the lock failed), it and its nats-server go
    stderr = second.log()
    assert f"another ledger serve (pid {first.pid}) is running its embedded NATS server on" in stderr
    assert "LEDGER_DATA_DIR" in stderr
    assert "Traceback" not in stderr
    assert first.runtime_path.read_text() == runtime
    client = await LedgerClient.connect(json.loads(runtime)["nats_url"], reconnect_forever=False)
    try:
        assert (await client.validate(vcpus=1)).status == "held"
    finally:
        await client.close()
    assert first.stop() == 0
