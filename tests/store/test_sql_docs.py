"""docs/sql.md tells analysts the truth: it lists every table and view the schema has, and each of its SQL
examples runs on SQLite and on PostgreSQL and gives the same rows for the same data."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from ledger.core.charges import AllocationRequest
from ledger.core.records import ImageRecord, InstanceRecord, VolumeRecord
from ledger.core.resources import ResourceType
from ledger.core.usage import InstanceUsage, UsageReport
from ledger.store import migrate
from ledger.store.ledger import Ledger
from tests.conftest import capacities

DOC = (Path(__file__).resolve().parents[2] / "docs" / "sql.md").read_text()
GIB = 2**30
PARAMS = {"host": "docs-a", "since": "2026-01-01"}


def examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC, flags=re.S)


def documented_tables() -> set[str]:
    section = DOC.split("## Tables", 1)[1].split("## Views", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))


def documented_views() -> set[str]:
    return {
        name
        for heading in re.findall(r"^### (.+)$", DOC, flags=re.M)
        for name in re.findall(r"`(\w+)`", heading.split(":")[0])
    }


def _fleet(url: str) -> Ledger:
    """The same small fleet, with holds and usage, on a fresh database."""
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False)
    # docs-b's images take over a fifth of its disk: an image pull there would be refused
    for host, cpu, used, images in (("docs-a", 8, 3.0, 3 * 10**9), ("docs-b", 16, 2.0, 250 * 10**9)):
        ledger.register_host(host, capacities(cpu=cpu), {r: 2.0 for r in ResourceType})
        ledger.apply_instance(
            host, InstanceRecord(id=f"{host}-vm", state="Running", vcpus=4, memory_bytes=8 * GIB)
        )
        ledger.apply_volume(host, VolumeRecord(id=f"{host}-vol", size_bytes=10**9))
        ledger.apply_image(host, ImageRecord(id=f"{host}-img", size_bytes=images))
        ledger.reserve(host, AllocationRequest(vcpus=2, memory_bytes=GIB))
        at = datetime.now(UTC).replace(second=0, microsecond=0)
        usage = InstanceUsage(f"{host}-vm", 1.0, 4 * GIB, 0, 0, cpu_vcpus=used)
        ledger.usage.ingest([UsageReport(host, at, 10.0, (usage,))])
    ledger.usage.roll_up()
    return ledger


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, pg_database_factory: Callable[[], str]
) -> Iterator[list[Ledger]]:
    """The fleet on SQLite and on PostgreSQL."""
    opened = [
        _fleet(f"sqlite:///{tmp_path_factory.mktemp('docs') / 'docs.db'}"),
        _fleet(pg_database_factory()),
    ]
    yield opened
    for ledger in opened:
        ledger.close()


def test_every_table_and_view_is_documented(engines: list[Ledger]) -> None:
    for ledger in engines:
        inspector = inspect(ledger.engine)
        assert documented_tables() == set(inspector.get_table_names())
        assert documented_views() == set(inspector.get_view_names())


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@pytest.mark.parametrize("index", range(len(examples())))
def test_each_example_query_runs_and_both_engines_agree(engines: list[Ledger], index: int) -> None:
    query = examples()[index]
    names = set(re.findall(r"(?<!:):(\w+)", query))
    answers = []
    for ledger in engines:
        with ledger.engine.connect() as conn:
            result = conn.execute(text(query), {n: PARAMS[n] for n in names})
            answers.append([tuple(_plain(v) for v in row) for row in result])
    assert answers[0] == answers[1], query
    if "ledger_drift" in query:
        assert answers[0] == []  # the audit: nothing may drift
    else:
        assert answers[0], f"the example finds nothing in the test's fleet: {query}"
