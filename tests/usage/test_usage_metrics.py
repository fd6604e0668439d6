"""`ledger_used` reads one summary row per host: the newest hour's p95 of the host's total use."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.core.records import InstanceRecord
from ledger.core.resources import ResourceType
from ledger.core.usage import InstanceUsage, UsageReport
from ledger.observe.usage import HourlyUsed
from ledger.store import migrate
from ledger.store.ledger import Ledger
from tests.conftest import capacities


@pytest.fixture
def book(tmp_path: Path) -> Iterator[tuple[Ledger, list[datetime]]]:
    now = [datetime.now(UTC).replace(minute=30, second=0, microsecond=0)]
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False, clock=lambda: now[0])
    ledger.register_host("h1", capacities(cpu=8), {r: 4.0 for r in ResourceType})
    ledger.apply_instance("h1", InstanceRecord(id="vm", state="Running", vcpus=2))
    yield ledger, now
    ledger.close()


def sample(ledger: Ledger, at: datetime, cpu: float) -> None:
    usage = InstanceUsage("vm", 1.0, 2**30, 0, 0, cpu_vcpus=cpu)
    ledger.usage.ingest([UsageReport("h1", at, 10.0, (usage,))])


def test_used_is_the_newest_hours_p95(book: tuple[Ledger, list[datetime]]) -> None:
    ledger, now = book
    sample(ledger, now[0] - timedelta(hours=1), 3.0)  # the previous hour
    for minute in range(10):
        sample(ledger, now[0].replace(minute=minute), 1.0)
    ledger.usage.roll_up()
    with ledger.engine.connect() as conn:
        used = HourlyUsed(lambda: now[0]).used(conn)
    assert used[("h1", "cpu")] == pytest.approx(1.0)  # this hour's, not the busier previous one's
    assert used[("h1", "memory")] == pytest.approx(2**30)
    assert ("h1", "network") not in used  # no TAP device: nothing to say
    assert ("h1", "disk") not in used

    now[0] += timedelta(hours=3)  # nothing sampled lately: the host says nothing rather than stale figures
    with ledger.engine.connect() as conn:
        assert HourlyUsed(lambda: now[0]).used(conn) == {}
