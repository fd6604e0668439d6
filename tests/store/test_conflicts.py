"""A deadlock is a conflict to retry, not an outage: PostgreSQL rolls one transaction back, the ledger
reports it as TransientConflict, and `Database.retrying` runs the work again, which then succeeds."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from ledger.core.errors import TransientConflict
from ledger.core.resources import ResourceType
from ledger.store.ledger import Ledger
from ledger.store.tx import Tx
from tests.conftest import capacities

pytestmark = pytest.mark.postgres


def test_a_deadlock_is_retried_as_a_conflict(pg_url: str, host_id: str) -> None:
    ledger = Ledger.open(pg_url, migrate=False)
    first, second = f"{host_id}-a", f"{host_id}-b"
    for host in (first, second):
        ledger.register_host(host, capacities(), {r: 1.0 for r in ResourceType})
    both_locked_one = threading.Barrier(2)
    attempts: list[int] = []
    lock = "SELECT host_id FROM hosts WHERE host_id = :h FOR UPDATE"

    def work(tx: Tx) -> str:
        """Lock `first`, then `second`; on the first attempt another transaction holds them the other way
        round. This one gives up first (short deadlock_timeout): it is the one rolled back."""
        assert tx.conn is not None
        attempts.append(1)
        tx.conn.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
        tx.conn.execute(text(lock), {"h": first})
        if len(attempts) == 1:
            both_locked_one.wait(timeout=10)
        tx.conn.execute(text(lock), {"h": second})
        return "done"

    def other() -> None:
        with ledger.engine.begin() as conn:
            conn.execute(text("SET LOCAL deadlock_timeout = '10s'"))
            conn.execute(text(lock), {"h": second})
            both_locked_one.wait(timeout=10)
            conn.execute(text(lock), {"h": first})  # waits for `work`, which then waits for this: a deadlock

    try:
        rival = threading.Thread(target=other)
        rival.start()
        assert ledger.db.retrying(work) == "done"
        rival.join(timeout=20)
        assert len(attempts) == 2  # rolled back once as a conflict, then done

        with pytest.raises(TransientConflict, match="conflicted with a concurrent transaction"):
            attempts.clear()
            rival = threading.Thread(target=other)
            rival.start()
            ledger.db.retrying(work, attempts=1)  # no second try: the conflict reaches the caller
        rival.join(timeout=20)
        assert ledger.drift() == []
    finally:
        ledger.close()
