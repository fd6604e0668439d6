"""The whole-group path builds its hold and log rows as tuples directly (`hold_values`, `log_values`), for
speed. They must be exactly what the ledger's own rows (`Ledger._hold_row`, `_log_row`) become through
their columns' binders, value for value and type for type, on both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, PickleType, String, Table
from sqlalchemy.dialects import postgresql, sqlite

from ledger.core.capacity import AllocationRequest
from ledger.core.resources import ResourceType
from ledger.core.units import MAX_AMOUNT
from ledger.store.admission import binder, binders
from ledger.store.ledger import Ledger, allocation_log, hosts, reservations
from ledger.store.totals import PEND_COLUMN
from ledger.store.whole_group import (
    HOLD_COLUMNS,
    LOG_COLUMNS,
    _check_direct_rows,
    hold_values,
    log_values,
)

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.psycopg.dialect()}  # type: ignore[no-untyped-call]
amounts = st.integers(0, MAX_AMOUNT)
requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 10**6),
    memory_bytes=amounts,
    disk_bytes=amounts,
    network_download_bps=amounts,
    network_upload_bps=amounts,
    disk_io_bps=amounts,
    needs_gpu=st.just(False),  # the whole-group path never takes a GPU request
    gpu_profile=st.sampled_from([None, ""]),
)
times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=13))]),
)


class Clock:
    """The ledger's clock, set by each example."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    path = Path(tmp_path_factory.mktemp("rows")) / "ledger.db"
    opened = Ledger.open(f"sqlite:///{path}", clock=CLOCK)
    yield opened
    opened.close()


@settings(max_examples=300, deadline=None)
@given(
    dialect=st.sampled_from(sorted(DIALECTS)),
    request=requests,
    key=st.none() | st.text(max_size=40),
    now=times,
    ttl=st.floats(0.001, 86_400) | st.integers(1, 86_400),
)
def test_direct_rows_equal_the_ledgers_rows_bound(
    ledger: Ledger, dialect: str, request: AllocationRequest, key: str | None, now: datetime, ttl: float
) -> None:
    bind_time = binder(hosts.c.next_expiry, DIALECTS[dialect])
    bind_hold = binders(reservations, HOLD_COLUMNS, DIALECTS[dialect])
    bind_log = binders(allocation_log, LOG_COLUMNS, DIALECTS[dialect])
    CLOCK.now = now
    row = ledger._hold_row("host-1", request, key, ttl)
    rid = row["reservation_id"]
    created, expires = bind_time(now), bind_time(now + timedelta(seconds=ttl))

    direct = hold_values(rid, "host-1", key, request, created, expires)
    expected = bind_hold(row)
    assert direct == expected
    assert [type(v) for v in direct] == [type(v) for v in expected]

    demands = request.demands()
    delta = {PEND_COLUMN[r]: amount for r, amount in zip(ResourceType, demands, strict=True) if amount}
    if delta:  # a hold that asks for nothing is not logged, on either path
        logged = bind_log(ledger._log_row("host-1", "reservation", rid, "reserved", "api", delta))
        assert log_values("host-1", created, rid, demands) == logged


def test_the_columns_are_the_tables() -> None:
    """`WholeGroupAdmission` checks this when it starts; here it fails with the names to fix."""
    assert sorted(HOLD_COLUMNS) == sorted(c.name for c in reservations.c)
    assert sorted(LOG_COLUMNS) == sorted(c.name for c in allocation_log.c if c.name != "id")


def _reservations_like(**types: Any) -> Table:
    """A copy of the reservations table with some columns' types replaced (or columns added)."""
    columns = [Column(c.name, types.pop(c.name, c.type)) for c in reservations.c]
    return Table("reservations", MetaData(), *columns, *(Column(n, t) for n, t in types.items()))


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_a_model_the_direct_rows_do_not_match_stops_the_start(dialect: str) -> None:
    _check_direct_rows(_reservations_like(), HOLD_COLUMNS, DIALECTS[dialect])  # as it is: fine
    with pytest.raises(RuntimeError, match=r"columns for reservations are not the model's: \[.*'note'"):
        _check_direct_rows(_reservations_like(note=String(10)), HOLD_COLUMNS, DIALECTS[dialect])
    with pytest.raises(RuntimeError, match=r"reservations\.vcpus unbound"):
        _check_direct_rows(_reservations_like(vcpus=PickleType()), HOLD_COLUMNS, DIALECTS[dialect])
