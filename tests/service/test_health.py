"""/livez, /healthz and /readyz of a running `ledger serve` and `ledger agent`, judged by status code as a
Kubernetes probe (or the container health check, deploy/readyz.sh) judges them: ready while the database
answers, NATS is connected and the consumer runs; 503 naming what failed while PostgreSQL (a private
cluster of this test's own, never the shared one) or NATS (the test's own server) is down; ready again after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.bus.embedded import EmbeddedNats
from tests.hosttree import materialize_host_tree
from tests.service.conftest import ServeFactory
from tests.service.helpers import (
    LIMITS,
    REPO,
    ServeProcess,
    base_env,
    http_get,
    logged_base_url,
    serve_env,
    start_agent,
    stop_process,
    unique,
)

READYZ_SCRIPT = REPO / "deploy" / "readyz.sh"
CHECKS = ("database", "nats", "consumer", "service")


def wait_status(base_url: str, status: int, timeout: float = 30.0) -> str:
    """Poll /readyz until it answers `status`; returns the body."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = http_get(base_url + "/readyz")
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {code} after {timeout:.0f} s (wanted {status}):\n{body}")
        time.sleep(0.1)


def container_check(base_url: str) -> int:
    """The image's health check, run as Docker runs it: its exit status."""
    env = {"PATH": os.environ["PATH"], "LEDGER_METRICS_ADDR": base_url.removeprefix("http://")}
    done = subprocess.run(["bash", str(READYZ_SCRIPT)], env=env, capture_output=True, timeout=30, check=False)
    return done.returncode


def test_a_running_serve_is_live_and_ready(serve_factory: ServeFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve = serve_factory(data_dir, serve_env(data_dir, unique("health")))
    assert serve.get("/livez") == (200, "ok\n")
    assert serve.get("/healthz") == (200, "ok\n")
    expected = [*(f"[+]{check} ok" for check in CHECKS), "readyz check passed"]
    assert wait_status(serve.base_url, 200).splitlines() == expected
    assert serve.get("/nope")[0] == 404
    assert container_check(serve.base_url) == 0


def test_readyz_is_503_while_nats_is_down_and_200_after(serve_factory: ServeFactory, tmp_path: Path) -> None:
    store = tmp_path / "nats-store"
    nats = EmbeddedNats(store)
    nats.start()
    port = nats.port
    try:
        data_dir = tmp_path / "data"
        serve = serve_factory(data_dir, serve_env(data_dir, unique("nats-down"), LEDGER_NATS_URL=nats.url))
        wait_status(serve.base_url, 200)

        nats.stop()
        body = wait_status(serve.base_url, 503)
        assert f"[-]nats failed: not connected to nats://127.0.0.1:{port}" in body, body
        assert "[+]database ok" in body and body.endswith("readyz check failed\n")
        assert serve.get("/livez") == (200, "ok\n")  # alive all along: a restart would not help
        assert container_check(serve.base_url) != 0

        nats = EmbeddedNats(store, port=port)
        nats.start()
        assert "readyz check passed" in wait_status(serve.base_url, 200)
        assert container_check(serve.base_url) == 0
    finally:
        nats.stop()


# ---- a private PostgreSQL cluster ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian's layout
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    return next((path for path in candidates if (path / "initdb").exists()), None)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory on its own port, which a test may stop and start."""

    bindir: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        data = str(self.root / "data")
        self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-w", "-l", str(self.root / "postgres.log"), "start")

    def stop(self, mode: str = "fast", *, check: bool = True) -> None:
        self._pg_ctl("-m", mode, "-w", "stop", check=check)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), *args, check=check)

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        # initdb and postgres refuse to run as root: as root, run them as the `postgres` user
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*prefix, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 or not check, f"{program} failed: {done.stdout}{done.stderr}"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """Never the machine's shared PostgreSQL: other tests use it."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to run a private cluster with")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    # not pytest's tmp_path: its parents are private to root, and the postgres user must reach the dir
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(bindir, root, _free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postgres
def test_readyz_is_503_while_postgres_is_down_and_200_after(
    serve_factory: ServeFactory, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = serve_env(data_dir, unique("pg-down"), LEDGER_DATABASE_URL=private_postgres.url)
    serve: ServeProcess = serve_factory(data_dir, env)
    wait_status(serve.base_url, 200)

    private_postgres.stop()
    body = wait_status(serve.base_url, 503)
    assert "[-]database failed: " in body and "[+]nats ok" in body, body
    assert "postgres@" not in body  # a reason, never the URL
    assert serve.get("/livez")[0] == 200
    scrape = serve.scrape()  # the scrape still answers, and says the database is down
    assert "ledger_database_up 0.0" in scrape

    private_postgres.start()
    assert "[+]database ok" in wait_status(serve.base_url, 200)
    assert "ledger_database_up 1.0" in serve.scrape()


# ---- the agent ------------------------------------------------------------------------------------------


async def test_the_agent_is_ready_while_it_has_nats(tmp_path: Path) -> None:
    nats = EmbeddedNats(tmp_path / "nats-store")
    nats.start()
    env = {**base_env(), **LIMITS, "LEDGER_DATA_DIR": str(tmp_path / "agent")}
    env.update(LEDGER_HOST_ID=unique("agent"), LEDGER_NATS_URL=nats.url, PYTHONUNBUFFERED="1")
    root = materialize_host_tree(REPO / "tests" / "fixtures" / "hosts" / "cpu-vm", tmp_path / "cpu-vm")
    agent = start_agent(tmp_path / "agent", env, "--root", str(root))
    try:
        base = await asyncio.to_thread(logged_base_url, tmp_path / "agent" / "agent.err", agent)
        assert http_get(base + "/livez") == (200, "ok\n")
        body = await asyncio.to_thread(wait_status, base, 200)
        assert body.splitlines() == ["[+]nats ok", "[+]agent ok", "readyz check passed"]
        assert await asyncio.to_thread(container_check, base) == 0

        nats.stop()
        body = await asyncio.to_thread(wait_status, base, 503)
        assert f"[-]nats failed: not connected to {nats.url}" in body, body
        assert http_get(base + "/livez")[0] == 200
    finally:
        assert await asyncio.to_thread(stop_process, agent) == 0
        nats.stop()
