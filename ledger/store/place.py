"""`place`: find the best host and hold there, in one call, with an idempotency key unique across the fleet.

The search (store/fleet) reads without locking, so by the time a hold is tried on the best candidate a
concurrent caller may have taken the room: that host's admission then refuses, and the next candidate is
tried, up to `attempts`. A key is recorded in `placements` in the hold's own transaction; a retry (on any
replica) finds it there and is answered by that host's admission, which replays the reservation. Calls
with the same key run one at a time (`_only_call_with`), so two sent at once get the same answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError

from ledger.core.charges import Ask
from ledger.core.errors import InsufficientResources, LedgerError
from ledger.store.admission import Admission, Answer
from ledger.store.database import Database
from ledger.store.fleet import Fleet, Search
from ledger.store.optimistic import OptimisticAdmission
from ledger.store.sql import placements as placements_table
from ledger.store.tx import LockedHost

_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


class Placer:
    """Places one ask on the best host that takes it (see the module docstring)."""

    def __init__(
        self, db: Database, fleet: Fleet, admission: Admission, optimistic: OptimisticAdmission | None
    ) -> None:
        self.db = db
        self.optimistic = optimistic
        self.fleet = fleet
        self.admission = admission
        self._duplicates = (IntegrityError, db.engine.dialect.loaded_dbapi.IntegrityError)
        self._stripes = [threading.Lock() for _ in range(64)]

    def place(
        self,
        ask: Ask,
        *,
        labels: Mapping[str, str],
        exclude: Sequence[str],
        policy: str,
        attempts: int,
    ) -> Answer:
        """The grant (its host named in it), or why not: the search's summary when no host fits."""
        if ask.key is None:
            return self._place(ask, labels, exclude, policy, attempts)
        with self._only_call_with(ask.key) as host:
            if host is not None:
                return self._on(host, ask)
            return self._place(ask, labels, exclude, policy, attempts)

    def _place(
        self, ask: Ask, labels: Mapping[str, str], exclude: Sequence[str], policy: str, attempts: int
    ) -> Answer:
        request = ask.request
        candidates = self.fleet.best(request, labels=labels, exclude=exclude, policy=policy, limit=attempts)
        for candidate in candidates:
            try:
                answer = self._on(candidate.host_id, ask, candidate.read)
            except self._duplicates:  # another caller placed the same key meanwhile: answer as it did
                assert ask.key is not None
                host = self.placed(ask.key)
                if host is None:
                    raise
                return self._on(host, ask)
            if not isinstance(answer, InsufficientResources):  # a grant, or a refusal no host would change
                return answer
        # refused: the full search says how the fleet falls short (and whether others took the room)
        search = self.fleet.search(ask.request, labels=labels, exclude=exclude, policy=policy, limit=attempts)
        return _refusal(search, taken=len(candidates))

    @contextmanager
    def _only_call_with(self, key: str) -> Iterator[str | None]:
        """Calls with the same key, one at a time across every replica, each told where an earlier one
        placed it (None: nowhere yet): a twin sent at the same moment waits, then finds the first one's
        grant (or is refused as it was), instead of searching alongside it and being refused for the room
        the first one took. PostgreSQL: a transaction-scoped advisory lock on the key's hash (a collision
        only makes two keys wait for each other), and the lookup in the same transaction; SQLite, whose
        one writer is this process: a lock per stripe of keys."""
        if self.db.sqlite:
            with self._stripes[hash(key) % len(self._stripes)]:
                yield self.placed(key)
            return
        with self.db.engine.connect() as conn, conn.begin():
            conn.execute(_ADVISORY_LOCK, {"key": key})
            yield _placed(conn, key)

    def placed(self, key: str) -> str | None:
        """The host a `place` with this key reserved on, if one did."""
        with self.db.read() as conn:
            return _placed(conn, key)

    def _on(self, host: str, ask: Ask, read: LockedHost | None = None) -> Answer:
        """Hold `ask` on `host`: in one statement decided on the search's `read` of it when no one has
        written the host since (PostgreSQL; store/optimistic.py), else in a transaction that locks it."""
        if self.optimistic is not None and read is not None:
            answers = self.optimistic.admit([(host, ask)], read=read, fleet_keys=True)
            if answers is not None:
                return answers[0]
        return self.db.retrying(lambda tx: self.admission.admit(tx, [(host, ask)], fleet_keys=True)[0])


def _placed(conn: Connection, key: str) -> str | None:
    found = conn.execute(
        select(placements_table.c.host_id).where(placements_table.c.idempotency_key == key)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def _refusal(search: Search, taken: int) -> LedgerError:
    shortfalls = search.shortfalls
    message = shortfalls.summary()
    if taken:  # every host that fitted was filled by concurrent requests first
        message = (
            f"no host fits: the {taken} that did were taken by concurrent requests "
            f"({shortfalls.considered} considered); retry"
        )
    return InsufficientResources(
        message,
        considered=shortfalls.considered,
        fitting=shortfalls.fitting,
        shortfalls=shortfalls.to_dict(),
    )
