"""PostgreSQL keeps a prepared statement's generic plan once it costs no more than the custom ones; chosen
while a table is small, that plan is a sequential scan, and the event batches' lookups slowed as
processed_events grew. A batch plans its statements afresh instead."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from ledger.store.journal import EventMark, mark_many, seen_many
from ledger.store.ledger import Ledger

# Without `SET LOCAL plan_cache_mode`, PostgreSQL 15 took the generic plan at about the 24th batch of
# 128 new events.
BATCHES = 60


def _plans(ledger: Ledger, host_id: str, batch: int) -> tuple[int, int]:
    """Look up a batch's event ids and record them, as the consumer does; (generic, custom) plans the
    lookup's prepared statement has had on that connection so far."""
    ids = [f"{host_id}-{batch}-{i}" for i in range(128)]
    with ledger.db.batch() as tx:
        assert seen_many(tx, ids) == set()
        mark_many(tx, [(EventMark(i, "instance.created"), host_id, i, 1, "applied") for i in ids])
        assert tx.conn is not None
        row = tx.conn.execute(
            text(
                "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
                "FROM pg_prepared_statements WHERE statement LIKE '%processed_events.event_id IN%' "
                "AND statement NOT LIKE '%pg_prepared_statements%'"
            )
        ).one()
    return int(row[0]), int(row[1])


def test_a_batch_never_settles_on_a_generic_plan(pg_database_factory: Any, host_id: str) -> None:
    ledger = Ledger.open(pg_database_factory(), migrate=True)  # a new ledger: its tables are empty
    try:
        runs = [_plans(ledger, host_id, batch) for batch in range(BATCHES)]
    finally:
        ledger.close()
    generic, custom = runs[-1]
    assert custom >= 3, f"psycopg never prepared the lookup, so this test shows nothing: {runs}"
    assert generic == 0, f"a batch used a generic plan: {runs}"
