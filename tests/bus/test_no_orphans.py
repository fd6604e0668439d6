"""No orphans: the embedded nats-server dies with `ledger serve` even on `kill -9`, a terminal's Ctrl-C
reaches `ledger serve` alone (which answers what is in flight, then stops the server), and a server left
over from a crashed run of the same data dir is stopped when the next one starts, never duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from ledger.bus.embedded import SERVER_FILE, EmbeddedNats
from ledger.client import LedgerClient, Reservation
from ledger.core.errors import InsufficientResources, Unavailable
from tests.service.helpers import REPO, ServeProcess, serve_env, unique

StartServe = Callable[[Path], ServeProcess]

# A run of an owner with no parent-death signal (a host without one, or a ledger from before it), "crashed"
# by the test with SIGKILL: its nats-server is left running, recorded in the store, owned by nobody.
CRASHED_OWNER = """
import sys, time
from pathlib import Path
from ledger.bus import embedded
embedded.PARENT_DEATH_SIGNAL = None
server = embedded.EmbeddedNats(Path(sys.argv[1]))
server.start()
assert server.process is not None
print(server.process.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def start_serve() -> Iterator[StartServe]:
    """`ledger serve` on a data dir (embedded NATS server, metrics on any free port); all stopped after."""
    started: list[ServeProcess] = []

    def start(data_dir: Path) -> ServeProcess:
        env = serve_env(data_dir, unique("orphans"), LEDGER_METRICS_ADDR="127.0.0.1:0")
        process = ServeProcess(data_dir, env)  # a session and group leader, as a terminal's job is
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def servers_on(store: Path) -> list[psutil.Process]:
    """Every live nats-server whose command line names `store`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["name"] != "nats-server" or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(store.resolve()) in (process.info["cmdline"] or []):
            found.append(process)
    return found


def gone(process: psutil.Process) -> bool:
    """Exited. A zombie counts: reaping an orphan is its new parent's job, and a container's init may not."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.02)


def test_kill_9_of_serve_takes_its_nats_server_with_it(start_serve: StartServe, tmp_path: Path) -> None:
    serve = start_serve(tmp_path / "data")
    [server] = servers_on(tmp_path / "data" / "nats")
    try:
        assert server.ppid() == serve.pid
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(10)
        wait_until(lambda: gone(server), 5, f"the nats-server (pid {server.pid}) gone with its killed serve")
        assert servers_on(tmp_path / "data" / "nats") == []
    finally:
        if not gone(server):  # the orphan this test is about: not left behind by a failure
            server.kill()


async def test_ctrl_c_to_the_group_answers_in_flight_requests_then_stops_the_server(
    start_serve: StartServe, tmp_path: Path
) -> None:
    store = tmp_path / "data" / "nats"
    serve = start_serve(tmp_path / "data")
    [server] = servers_on(store)
    assert os.getpgid(serve.pid) == serve.pid  # the foreground job a terminal's Ctrl-C goes to ...
    assert os.getpgid(server.pid) != serve.pid  # ... which the nats-server is not part of
    client = await LedgerClient.connect(serve.nats_url, timeout=15, reconnect_forever=False)
    try:
        await client.validate(vcpus=0, memory_bytes=1)  # answered: serve has its signal handlers
        calls = [
            asyncio.create_task(client.validate(vcpus=i % 2, memory_bytes=2**20, idempotency_key=f"k-{i}"))
            for i in range(300)
        ]
        await asyncio.sleep(0)  # each call runs up to its publish (buffered, nothing to wait for) ...
        await client.nc.flush()  # ... and the server has every request before the Ctrl-C
        os.killpg(serve.pid, signal.SIGINT)
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.nc.close(), 5)
    unanswered = [r for r in results if not isinstance(r, Reservation | InsufficientResources)]
    assert not unanswered, (
        f"{len(unanswered)} of {len(calls)} requests in flight got no answer: {unanswered[:3]}"
    )
    assert any(isinstance(r, Reservation) for r in results)
    assert serve.wait(20) == 0, serve.log()
    assert "stopped cleanly" in serve.log() and "Traceback" not in serve.log()
    assert gone(server)
    server_log = (store / "nats-server.log").read_text()
    # stopped by serve after its drain (SIGTERM), not by the terminal's Ctrl-C
    assert 'Trapped "terminated" signal' in server_log and "interrupt" not in server_log


def test_a_server_left_over_from_a_crashed_run_is_stopped_not_duplicated(
    start_serve: StartServe, tmp_path: Path
) -> None:
    store = tmp_path / "data" / "nats"
    owner = subprocess.Popen(
        [sys.executable, "-c", CRASHED_OWNER, str(store)], stdout=subprocess.PIPE, cwd=REPO
    )
    leftover: psutil.Process | None = None
    try:
        assert owner.stdout is not None
        leftover = psutil.Process(int(owner.stdout.readline()))
        owner.kill()  # the crash
        owner.wait(10)
        assert not gone(leftover) and [p.pid for p in servers_on(store)] == [leftover.pid]

        serve = start_serve(tmp_path / "data")
        assert gone(leftover)
        [server] = servers_on(store)
        assert server.pid != leftover.pid and server.ppid() == serve.pid
        said = [line for line in serve.log().splitlines() if "left over" in line]
        assert len(said) == 1 and f"pid {leftover.pid}" in said[0], serve.log()
        assert json.loads((store / SERVER_FILE).read_text())["pid"] == server.pid
        assert serve.stop() == 0, serve.log()
        assert servers_on(store) == []
    finally:
        if owner.stdout is not None:
            owner.stdout.close()
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if leftover is not None and not gone(leftover):
            leftover.kill()


def test_a_recycled_pid_in_the_record_is_left_alone(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """The record names a process that is not a nats-server, or serves another store: neither is touched."""
    store = tmp_path / "store"
    store.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert nats_server.process is not None
        for pid in (bystander.pid, nats_server.process.pid):
            record = {
                "pid": pid,
                "create_time": psutil.Process(pid).create_time(),
                "ports_dir": str(tmp_path),
            }
            (store / SERVER_FILE).write_text(json.dumps(record))
            with EmbeddedNats(store) as server:
                assert server.url.startswith("nats://")
            assert bystander.poll() is None and nats_server.process.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_second_owner_is_refused_before_it_touches_the_first_ones_server(tmp_path: Path) -> None:
    first, second = EmbeddedNats(tmp_path / "nats"), EmbeddedNats(tmp_path / "nats")
    with first:
        assert first.process is not None
        with pytest.raises(Unavailable, match="another ledger serve"):
            second.start()
        assert first.process.poll() is None
        assert json.loads((tmp_path / "nats" / SERVER_FILE).read_text())["pid"] == first.process.pid
    assert not (tmp_path / "nats" / SERVER_FILE).exists()  # a clean stop leaves nothing to find


def test_the_server_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """Linux sends the death signal when the forking *thread* ends: `ledger serve` starts the server from an
    asyncio worker thread, which must not take the server down with it."""
    server = EmbeddedNats(tmp_path / "nats")
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    try:
        assert server.process is not None
        deadline = time.monotonic() + 0.3  # the signal would be sent as the thread exits; allow for delivery
        while time.monotonic() < deadline:
            assert server.process.poll() is None, "the server died with the thread that started it"
            time.sleep(0.02)
    finally:
        server.stop()
