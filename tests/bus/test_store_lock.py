"""One embedded NATS server per store directory: a second is refused with a message naming the first, the
store is free again once the first stops, and a holder that is SIGKILLed leaves nothing locked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.bus.embedded import EmbeddedNats
from ledger.bus.store_lock import LOCK_FILE
from ledger.core.errors import Unavailable

HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from ledger.bus.store_lock import StoreLock
StoreLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_server_on_one_store_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    first, second = EmbeddedNats(store), EmbeddedNats(store)
    try:
        first.start()
        with pytest.raises(Unavailable) as refused:
            second.start()
        message = str(refused.value)
        assert f"another ledger serve (pid {os.getpid()})" in message
        assert str(store) in message and "LEDGER_DATA_DIR" in message
        assert second.process is None  # it never started a nats-server
        first.stop()
        second.start()  # the store is free again
        assert second.url.startswith("nats://")
    finally:
        first.stop()
        second.stop()


def test_a_killed_holder_leaves_the_store_free(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(store)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        server = EmbeddedNats(store)
        try:
            with pytest.raises(Unavailable, match=rf"pid {holder.pid}\)"):
                server.start()
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            server.start()  # no stale lock: the kernel dropped it with the process
            assert re.fullmatch(rf"{os.getpid()}\n", (store / LOCK_FILE).read_text())
        finally:
            server.stop()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
