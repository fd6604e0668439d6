"""What a PostgreSQL fleet search runs on: walks on connections of their own that prefer indexes (and stay
read-only for a read-only ledger), a dropped one reported as `unavailable`, and counts taken beside the
search that never make more hosts short than there are."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text

from ledger.core.charges import AllocationRequest
from ledger.core.errors import Unavailable
from ledger.core.placement import PACK, SPREAD
from ledger.core.resources import ResourceType
from ledger.store.ledger import Ledger
from tests.conftest import capacities

GIB = 2**30


def _setting(engine: Any, name: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text(f"SHOW {name}")).scalar_one())


def test_walks_prefer_indexes_on_their_own_connections_only(pg_url: str) -> None:
    ledger = Ledger.open(pg_url, migrate=False)
    reader = Ledger.open(pg_url, migrate=False, read_only=True)
    try:
        assert ledger.fleet.walker is not None and reader.fleet.walker is not None
        assert _setting(ledger.fleet.walker, "enable_seqscan") == "off"
        assert _setting(ledger.fleet.walker, "enable_bitmapscan") == "off"
        assert _setting(ledger.engine, "enable_seqscan") == "on"  # the main pool is left as it was
        assert _setting(ledger.fleet.walker, "default_transaction_read_only") == "off"
        # made as the reader's own engine is: its walks are read-only sessions too
        assert _setting(reader.fleet.walker, "default_transaction_read_only") == "on"
    finally:
        reader.close()
        ledger.close()


def test_a_walk_on_a_dropped_connection_is_unavailable_then_recovers(pg_url: str, host_id: str) -> None:
    ledger = Ledger.open(pg_url, migrate=False)
    try:
        ledger.register_host(host_id, capacities(cpu=8, memory=16 * GIB), {}, labels={"z": host_id})
        request = AllocationRequest(vcpus=1)
        assert ledger.fleet.walker is not None
        with ledger.fleet.walker.connect() as conn:  # the walk's pooled connection, ended by the server
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with ledger.engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            admin.commit()
        with pytest.raises(Unavailable):
            ledger.fleet.best(request, labels={"z": host_id}, policy=SPREAD, limit=1)
        found = ledger.fleet.best(request, labels={"z": host_id}, policy=SPREAD, limit=1)
        assert [c.host_id for c in found] == [host_id]
    finally:
        ledger.close()


def test_a_host_taken_between_the_search_and_the_count_is_short_once(pg_url: str, host_id: str) -> None:
    """The best are read, then another caller takes the host, then the count runs: the host is short of
    cpu once (by the count), not also moved out of `fitting` again (which would make it -1)."""
    ledger = Ledger.open(pg_url, migrate=False)
    other = Ledger.open(pg_url, migrate=False)
    try:
        ledger.register_host(host_id, capacities(cpu=1), {ResourceType.CPU: 1.0}, labels={"z": host_id})
        taken = threading.Event()
        read, count = ledger.fleet._read, ledger.fleet._count

        def take_then_read(host_ids: Any) -> Any:
            other.reserve(host_id, AllocationRequest(vcpus=1))
            taken.set()
            return read(host_ids)

        def count_after_taken(*args: Any) -> Any:
            assert taken.wait(30)
            return count(*args)

        ledger.fleet._read = take_then_read  # type: ignore[method-assign]
        ledger.fleet._count = count_after_taken  # type: ignore[method-assign]
        found = ledger.candidates(AllocationRequest(vcpus=1), labels={"z": host_id}, policy=PACK, limit=1)
        assert found.candidates == []
        shortfalls = found.shortfalls
        assert shortfalls.fitting == 0 and shortfalls.by_resource.get("cpu") == 1
        # every other host of the database lacks the label: this one is the only one with it
        assert shortfalls.considered == 1 + sum(shortfalls.by_label.values())
    finally:
        other.close()
        ledger.close()
