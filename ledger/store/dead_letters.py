"""Dead letters: the events that could not be applied, kept with the reason, listed a page at a time
(newest first) and marked when an operator replays one. The SQL is the journal's (`store/journal.py`)."""

from __future__ import annotations

from ledger.core.errors import NotFound
from ledger.store import journal
from ledger.store.database import Database
from ledger.store.journal import DeadLetterRecord


class DeadLetters:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        *,
        payload: bytes,
        reason: str,
        subject: str = "",
        stream_seq: int | None = None,
        host_id: str | None = None,
    ) -> int:
        """Keep an event that cannot be applied, with the reason (joins the current batch, if any)."""
        with self.db.transaction() as tx:
            assert tx.conn is not None
            return journal.record(
                tx.conn,
                payload=payload,
                reason=reason,
                subject=subject,
                stream_seq=stream_seq,
                host_id=host_id,
            )

    def page(
        self, *, include_replayed: bool = False, limit: int = 100, before: int | None = None
    ) -> list[DeadLetterRecord]:
        """Newest first, a page at a time: `before` is the last id of the page before."""
        with self.db.read() as conn:
            return journal.listing(conn, include_replayed=include_replayed, limit=limit, before=before)

    def count(self, *, include_replayed: bool = False) -> int:
        with self.db.read() as conn:
            return journal.count(conn, include_replayed=include_replayed)

    def get(self, dead_letter_id: int) -> DeadLetterRecord:
        with self.db.read() as conn:
            found = journal.get(conn, dead_letter_id)
        if found is None:
            raise NotFound(f"no dead letter {dead_letter_id}", dead_letter_id=dead_letter_id)
        return found

    def mark_replayed(self, dead_letter_id: int) -> None:
        with self.db.transaction() as tx:
            assert tx.conn is not None
            journal.mark_replayed(tx.conn, dead_letter_id)
