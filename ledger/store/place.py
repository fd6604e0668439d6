"""`place`: find the best host and hold there, in one call, with an idempotency key unique across the fleet.

The search (store/fleet) reads without locking, so by the time a hold is tried on the best candidate a
concurrent caller may have taken the room: that host's admission then refuses, and the next candidate is
tried, up to `attempts`. A key is recorded in `placements` in the hold's own transaction; a retry (on any
replica) finds it there and is answered by that host's admission, which replays the reservation. Calls
with the same key run one at a time (`_only_call_with`), so two sent at once get the same answer.

`place_many` (PostgreSQL) answers calls that arrive together as one group: their keys locked and looked up
in one statement, one search per kind of request, the asks shared out over its candidates as one-by-one
calls would place them (`core.placement.share_out`), and each host's share held in one statement. A call
the group could not settle (its host taken meanwhile, nothing fitting, a key seen before, a twin in the
same group) is then placed on its own, as above: same decision, same answers, far fewer round trips.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError

from ledger.core.admission import Admit, check_key, check_ttl
from ledger.core.charges import AllocationRequest, Ask
from ledger.core.errors import InsufficientResources, LedgerError
from ledger.core.host import HostState
from ledger.core.placement import MAX_LIMIT, PlaceCall, check_policy, share_out
from ledger.store.admission import Admission, Answer
from ledger.store.database import Database
from ledger.store.fleet import Fleet, Search
from ledger.store.optimistic import OptimisticAdmission
from ledger.store.sql import placements as placements_table
from ledger.store.tx import LockedHost

_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
# a group's keys, locked in one order (by hash) so that two groups never wait for each other in a cycle
_ADVISORY_LOCKS = text(
    "SELECT pg_advisory_xact_lock(lock) FROM (SELECT DISTINCT hashtextextended(key, 0) AS lock "
    "FROM unnest(CAST(:keys AS TEXT[])) AS key ORDER BY lock) AS locks"
)


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
        self._check(ask, policy)
        if ask.key is None:
            return self._place(ask, labels, exclude, policy, attempts)
        with self._only_call_with(ask.key) as host:
            if host is not None:
                return self._on(host, ask, placed=True)
            return self._place(ask, labels, exclude, policy, attempts)

    def place_many(self, calls: Sequence[PlaceCall]) -> list[Answer]:
        """Each call's answer, in order, as `place` gives it; on PostgreSQL settled as a group where it can
        be (see the module docstring)."""
        if self.db.sqlite or len(calls) < 2:  # SQLite: one writer, whose one-by-one place is quick
            return [self._place_one(call) for call in calls]
        answers: list[Answer | None] = [None] * len(calls)
        alone: list[int] = []  # placed on their own, after the group
        keyed: dict[str, int] = {}
        grouped: list[int] = []
        for index, call in enumerate(calls):
            try:
                self._check(call.ask, call.policy)
            except LedgerError as exc:
                answers[index] = exc
                continue
            key = call.ask.key
            if key is not None and key in keyed:  # a twin: answered after the first, as `place` would
                alone.append(index)
                continue
            if key is not None:
                keyed[key] = index
            grouped.append(index)
        try:
            with self._only_calls_with(list(keyed)) as placed:
                searches: dict[Hashable, list[int]] = {}
                for index in grouped:
                    if calls[index].ask.key in placed:  # a retry: its host replays it
                        alone.append(index)
                    else:
                        searches.setdefault(calls[index].search(), []).append(index)
                for indices in searches.values():
                    alone += self._place_group(calls, indices, answers)
        except LedgerError as exc:  # the database failed under the group: what it did not answer, this
            for index in set(grouped) - set(alone):
                answers[index] = answers[index] or exc
        for index in sorted(alone):  # the group's keys are unlocked: `place` takes each call's own lock
            answers[index] = self._place_one(calls[index])
        return answers  # type: ignore[return-value]  # every index was answered above

    def _check(self, ask: Ask, policy: str) -> None:
        """InvalidRequest for a bad TTL, key or policy, whether or not a host fits: admission would say so
        only on a host that fits, and a refusal would hide what the caller has to fix."""
        check_ttl(ask.ttl, self.admission.reservation_ttl)
        check_key(ask.key)
        check_policy(policy)

    def _place_one(self, call: PlaceCall) -> Answer:
        """`place`'s answer, an error included: one call's failure is not its neighbours'."""
        try:
            return self.place(
                call.ask, labels=call.labels, exclude=call.exclude, policy=call.policy, attempts=call.attempts
            )
        except LedgerError as exc:
            return exc

    def _place_group(
        self, calls: Sequence[PlaceCall], indices: list[int], answers: list[Answer | None]
    ) -> list[int]:
        """Hold the calls at `indices` (one kind of request) where one-by-one calls would go, all in one
        transaction; the indices left unanswered (their host was taken meanwhile, or nothing fits)."""
        first = calls[indices[0]]
        request = first.ask.request
        limit = min(MAX_LIMIT, len(indices) + max(calls[index].attempts for index in indices))
        candidates = self.fleet.best(
            request, labels=first.labels, exclude=first.exclude, policy=first.policy, limit=limit
        )
        states = [c.state for c in candidates if c.state is not None]
        chosen = share_out(states, len(indices), first.policy, self._pending_with(request))
        shares: dict[str, list[int]] = {}
        for index, host in zip(indices, chosen, strict=False):
            shares.setdefault(host, []).append(index)
        left = indices[len(chosen) :]
        held = [(host, calls[index].ask) for host, share in shares.items() for index in share]
        at = [index for share in shares.values() for index in share]
        if not held:
            return left
        try:
            got = self.db.retrying(lambda tx: self.admission.admit(tx, held, fleet_keys=True, new_keys=True))
        except self._duplicates:  # a key placed meanwhile (not under our lock?): each call on its own
            return left + at
        except LedgerError as exc:  # unavailable, written or not: a retry with the same key finds out
            for index in at:
                answers[index] = exc
            return left
        for index, answer in zip(at, got, strict=True):
            if isinstance(answer, InsufficientResources):  # taken since the search: the next host, alone
                left.append(index)
            else:
                answers[index] = answer
        return left

    def _pending_with(self, request: AllocationRequest) -> Callable[[HostState, int], tuple[int, ...] | None]:
        """`share_out`'s question: a host's pending totals with n asks for `request` held, by decide."""

        def pending_with(host: HostState, n: int) -> tuple[int, ...] | None:
            decision = self.admission.decide(host, [Ask(request)] * n, {})
            return decision.pending if isinstance(decision.outcomes[-1], Admit) else None

        return pending_with

    @contextmanager
    def _only_calls_with(self, keys: Sequence[str]) -> Iterator[dict[str, str]]:
        """`_only_call_with` for a group's keys at once (PostgreSQL): which of them were placed, and where."""
        if not keys:
            yield {}
            return
        with self.db.session() as conn:
            conn.execute(_ADVISORY_LOCKS, {"keys": list(keys)})
            found = conn.execute(
                select(placements_table.c.idempotency_key, placements_table.c.host_id).where(
                    placements_table.c.idempotency_key.in_(keys)
                )
            )
            yield {str(key): str(host) for key, host in found}

    def _place(
        self, ask: Ask, labels: Mapping[str, str], exclude: Sequence[str], policy: str, attempts: int
    ) -> Answer:
        request = ask.request
        candidates = self.fleet.best(request, labels=labels, exclude=exclude, policy=policy, limit=attempts)
        for candidate in candidates:
            try:
                answer = self._on(candidate.host_id, ask, candidate.read, placed=False)
            except self._duplicates:  # another caller placed the same key meanwhile: answer as it did
                assert ask.key is not None
                host = self.placed(ask.key)
                if host is None:
                    raise
                return self._on(host, ask, placed=True)
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
        with self.db.session() as conn:
            conn.execute(_ADVISORY_LOCK, {"key": key})
            yield _placed(conn, key)

    def placed(self, key: str) -> str | None:
        """The host a `place` with this key reserved on, if one did."""
        with self.db.read() as conn:
            return _placed(conn, key)

    def _on(self, host: str, ask: Ask, read: LockedHost | None = None, *, placed: bool) -> Answer:
        """Hold `ask` on `host`: in one statement decided on the search's `read` of it when no one has
        written the host since (PostgreSQL; store/optimistic.py), else in a transaction that locks it.
        `placed`: a `place` recorded the key on `host` already (a retry), so a replay needs no record."""
        if self.optimistic is not None and read is not None:  # it leaves any key seen before to the lock
            answers = self.optimistic.admit([(host, ask)], read=read, fleet_keys=True)
            if answers is not None:
                return answers[0]
        return self.db.retrying(
            lambda tx: self.admission.admit(tx, [(host, ask)], fleet_keys=True, new_keys=not placed)[0]
        )


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
