"""Admission, the one store path: lock each host → read its state and the earlier holds of the group's
keys → `core.admission.decide` → write the holds, their history rows and the new totals.

A single validate is a group of one; a group may span hosts (each locked in sorted order, so concurrent
groups never deadlock). `plan` turns a decision into rows and answers, and is the only place that does:
the optimistic strategy (store/optimistic.py) writes the same plan with another statement shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ledger.core.admission import Admit, Decision, EarlierHold, Replay, conflict, decide
from ledger.core.charges import Ask, DefaultBandwidth
from ledger.core.errors import LedgerError, UnknownHost
from ledger.core.host import HostState
from ledger.core.results import HELD, Grant
from ledger.store.hosts import Hosts
from ledger.store.ids import reservation_id
from ledger.store.reservations import Reservations
from ledger.store.rows import hold_delta, hold_row, log_row
from ledger.store.sql import Sql
from ledger.store.totals import pending_delta
from ledger.store.tx import LockedHost, Tx

HostAsk = tuple[str, Ask]  # an ask and the host it is for
Answer = Grant | LedgerError


@dataclass(frozen=True, slots=True)
class Plan:
    """What a decision writes: hold and history rows (bound), the answers, and the earliest new expiry."""

    holds: list[tuple[Any, ...]]
    logs: list[tuple[Any, ...]]
    answers: list[Answer]
    earliest: datetime | None


class Admission:
    """Decides groups of asks with `decide` and writes what it says (see the module docstring)."""

    def __init__(
        self,
        sql: Sql,
        hosts: Hosts,
        reservations: Reservations,
        defaults: DefaultBandwidth,
        reservation_ttl: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.sql = sql
        self.hosts = hosts
        self.reservations = reservations
        self.defaults = defaults
        self.reservation_ttl = reservation_ttl
        self.clock = clock

    def admit(
        self, tx: Tx, asks: Sequence[HostAsk], *, fleet_keys: bool = False, new_keys: bool = False
    ) -> list[Answer]:
        """The answer to every ask, in order; asks for different hosts do not affect each other. With
        `fleet_keys` (`place`) a new hold's idempotency key is recorded as unique across the fleet; with
        `new_keys` too (the caller vouches that no `place` recorded the keys yet) so is a replayed one's: it
        replays a `validate` hold on its host, which the key then names fleet-wide, so that a retry finds
        it there instead of holding again elsewhere."""
        answers: list[Answer | None] = [None] * len(asks)
        by_host: dict[str, list[int]] = {}
        for index, (host_id, _) in enumerate(asks):
            by_host.setdefault(host_id, []).append(index)
        tx.read_ahead(list(by_host))  # several hosts: locked and read by one statement
        locked: dict[str, LockedHost] = {}
        for host_id in sorted(by_host):  # each locked (and its expired holds swept) before any is decided
            try:
                locked[host_id] = tx.lock(host_id)
            except UnknownHost as exc:
                for index in by_host[host_id]:
                    answers[index] = exc
        keys = {
            host_id: [key for index in by_host[host_id] if (key := asks[index][1].key) is not None]
            for host_id in locked
        }
        earlier_on = self.reservations.earlier_on(tx.cursor, keys)  # one statement for every host
        for host_id, host in locked.items():
            indices = by_host[host_id]
            state = self.hosts.state(tx.cursor, host)
            group = [asks[index][1] for index in indices]
            earlier = earlier_on.get(host_id, {})
            decision = self.decide(state, group, earlier)
            plan = self.plan(host_id, group, decision)
            tx.holds += plan.holds
            tx.logs += plan.logs
            gpu_before = state.gpu.pending if state.gpu is not None else 0
            tx.move(host, pending_delta(state.pending, decision.pending, decision.gpu_pending - gpu_before))
            if plan.earliest is not None:
                tx.hold_expiring(host, plan.earliest)
            for index, answer in zip(indices, plan.answers, strict=True):
                answers[index] = answer
            if fleet_keys:
                tx.placements.extend(self.placements(host_id, group, plan.answers, replayed=new_keys))
        return answers  # type: ignore[return-value]  # every index was answered above

    def placements(
        self, host_id: str, group: Sequence[Ask], answers: Sequence[Answer], *, replayed: bool = False
    ) -> list[tuple[Any, ...]]:
        """`place`'s rows (PLACEMENT_COLUMNS): each new hold's idempotency key, unique across the fleet
        (and each replayed one's, with `replayed`)."""
        created = self.sql.bind_time(self.clock())
        return [
            (ask.key, host_id, answer.reservation_id, created)
            for ask, answer in zip(group, answers, strict=True)
            if ask.key is not None and isinstance(answer, Grant) and (replayed or not answer.replayed)
        ]

    def decide(self, state: HostState, group: Sequence[Ask], earlier: dict[str, EarlierHold]) -> Decision:
        return decide(state, group, earlier, self.defaults, self.reservation_ttl)

    def plan(self, host_id: str, group: Sequence[Ask], decision: Decision) -> Plan:
        """The rows and answers of `decision` (one creation time for the whole group, bound once)."""
        now = self.clock()
        bind = self.sql.bind_time
        created = bind(now)
        expiries: dict[float, tuple[datetime, Any]] = {}  # per TTL: when its holds expire, and that bound
        holds: list[tuple[Any, ...]] = []
        logs: list[tuple[Any, ...]] = []
        answers: list[Answer] = []
        for ask, outcome in zip(group, decision.outcomes, strict=True):
            if isinstance(outcome, Admit):
                expires = expiries.get(outcome.ttl)
                if expires is None:
                    at = now + timedelta(seconds=outcome.ttl)
                    expires = expiries[outcome.ttl] = (at, bind(at))
                rid = reservation_id()
                charge = outcome.charge
                holds.append(hold_row(rid, host_id, ask.key, charge, created, expires[1]))
                delta = hold_delta((*charge.amounts(), charge.gpu))
                if delta:
                    logs.append(log_row(host_id, created, "reservation", rid, "reserved", "api", delta))
                answers.append(Grant(rid, host_id, HELD, expires[0], ask.key, charge))
            elif isinstance(outcome, LedgerError):
                answers.append(outcome)
            elif isinstance(outcome, Replay):
                answers.append(self._replayed(outcome.earlier, answers))
            else:  # the key was used for a different request
                refusal = conflict(outcome.key, self._replayed(outcome.earlier, answers).reservation_id)
                refusal.details["host"] = host_id
                answers.append(refusal)
        earliest = min(expires[0] for expires in expiries.values()) if expiries else None
        return Plan(holds, logs, answers, earliest)

    @staticmethod
    def _replayed(earlier: EarlierHold | int, answers: list[Answer]) -> Grant:
        """The grant an idempotency key was first given, as a replay answers it."""
        if isinstance(earlier, int):  # a grant earlier in this group
            granted = answers[earlier]
            assert isinstance(granted, Grant)
            return dataclasses.replace(granted, replayed=True)
        return Grant(
            earlier.reservation_id,
            earlier.host_id,
            earlier.status,
            earlier.expires_at,
            earlier.key,
            earlier.charge,
            replayed=True,
        )
