"""The event journal: which events were applied (so a redelivery is a no-op), dead letters (events that
could not be applied), and the consumer's position in its stream as the database records it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.dialects import postgresql

from ledger.store.models import ConsumerPosition, DeadLetter, ProcessedEvent, utcnow
from ledger.store.tx import Tx

dead_letters = cast(Table, DeadLetter.__table__)
processed_events = cast(Table, ProcessedEvent.__table__)
positions = cast(Table, ConsumerPosition.__table__)

_SEEN_CHUNK = 500  # event ids per SELECT … IN (…)


@dataclass(frozen=True, slots=True)
class EventMark:
    """The event a write comes from: recorded in the same transaction so a redelivery is a no-op."""

    event_id: str
    event_type: str
    stream_seq: int | None = None


def seen_many(tx: Tx, event_ids: Sequence[str]) -> set[str]:
    """Which of these events this database has already applied (or found stale)."""
    assert tx.conn is not None
    found: set[str] = set()
    unique = sorted(set(event_ids))
    for start in range(0, len(unique), _SEEN_CHUNK):
        chunk = unique[start : start + _SEEN_CHUNK]
        query = select(processed_events.c.event_id).where(processed_events.c.event_id.in_(chunk))
        found.update(tx.conn.execute(query).scalars())
    return found


def seen(tx: Tx, event: EventMark | None) -> bool:
    return event is not None and bool(seen_many(tx, [event.event_id]))


def mark_many(tx: Tx, handled: Sequence[tuple[EventMark, str, str, int, str]]) -> None:
    """Record events as handled — (mark, host, entity, version, outcome) — in the transaction that did it."""
    if not handled:
        return
    assert tx.conn is not None
    now = tx.clock()
    tx.conn.execute(
        insert(processed_events),
        [
            {
                "event_id": event.event_id,
                "host_id": host_id,
                "stream_seq": event.stream_seq,
                "event_type": event.event_type,
                "entity_id": entity_id,
                "version": version,
                "outcome": outcome,
                "processed_at": now,
            }
            for event, host_id, entity_id, version, outcome in handled
        ],
    )


def mark(tx: Tx, event: EventMark | None, host_id: str, entity_id: str, version: int, outcome: str) -> None:
    if event is not None:
        mark_many(tx, [(event, host_id, entity_id, version, outcome)])


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    host_id: str | None
    stream_seq: int | None
    subject: str
    payload: bytes
    reason: str
    created_at: datetime
    replayed_at: datetime | None

    def to_dict(self, *, with_payload: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "host": self.host_id,
            "stream_seq": self.stream_seq,
            "subject": self.subject,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "payload_bytes": len(self.payload),
        }
        if with_payload:
            data["payload"] = self.payload.decode("utf-8", errors="replace")
        return data


def record(
    conn: Connection,
    *,
    payload: bytes,
    reason: str,
    subject: str = "",
    stream_seq: int | None = None,
    host_id: str | None = None,
) -> int:
    """Keep a poison event with why it was refused; returns its id."""
    result = conn.execute(
        insert(dead_letters).returning(dead_letters.c.id),
        {
            "payload": payload,
            "reason": reason,
            "subject": subject[:512],
            "stream_seq": stream_seq,
            "host_id": host_id[:255] if host_id else None,
            "created_at": utcnow(),
        },
    )
    return int(result.scalar_one())


def listing(
    conn: Connection, *, include_replayed: bool = False, limit: int = 100, before: int | None = None
) -> list[DeadLetterRecord]:
    """Newest first: up to `limit` dead letters with an id below `before` (the last one of a page)."""
    query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if not include_replayed:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    if before is not None:
        query = query.where(dead_letters.c.id < before)
    return [DeadLetterRecord(**row) for row in conn.execute(query).mappings()]


def count(conn: Connection, *, include_replayed: bool = False) -> int:
    query = select(func.count()).select_from(dead_letters)
    if not include_replayed:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    return int(conn.execute(query).scalar_one())


def get(conn: Connection, dead_letter_id: int) -> DeadLetterRecord | None:
    row = (
        conn.execute(select(dead_letters).where(dead_letters.c.id == dead_letter_id)).mappings().one_or_none()
    )
    return DeadLetterRecord(**row) if row else None


def mark_replayed(conn: Connection, dead_letter_id: int) -> None:
    conn.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id).values(replayed_at=utcnow()))


def last_stream_seq(conn: Connection, consumer: str) -> int:
    """The low-water mark: every stream sequence up to it has been handled by `consumer` in this database."""
    found = conn.execute(select(positions.c.stream_seq).where(positions.c.consumer == consumer)).scalar()
    return int(found or 0)


def advance(conn: Connection, consumer: str, handled: Iterable[int], floor: int = 0) -> int:
    """Record `handled` sequences (and that nothing below `floor` remains); returns the new low-water mark.

    Runs under the writer's lock (SQLite) or a row lock (PostgreSQL), in the transaction that applied them.
    """
    # Make sure the row exists before locking it: two replicas starting on a fresh database would both
    # find nothing to lock and both insert it.
    fresh = {"consumer": consumer, "stream_seq": 0, "handled_above": "[]", "updated_at": utcnow()}
    if conn.dialect.name == "postgresql":
        conn.execute(
            postgresql.insert(positions).values(fresh).on_conflict_do_nothing(index_elements=["consumer"])
        )
    else:
        conn.execute(insert(positions).prefix_with("OR IGNORE").values(fresh))
    row = conn.execute(
        select(positions.c.stream_seq, positions.c.handled_above)
        .where(positions.c.consumer == consumer)
        .with_for_update()
    ).one()
    mark = max(int(row.stream_seq), floor)
    above = {int(s) for s in json.loads(row.handled_above)}
    above |= set(handled)
    while mark + 1 in above:
        mark += 1
    above = {s for s in above if s > mark}
    values = {"stream_seq": mark, "handled_above": json.dumps(sorted(above)), "updated_at": utcnow()}
    conn.execute(update(positions).where(positions.c.consumer == consumer).values(values))
    return mark
