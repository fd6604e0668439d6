"""Where does this VM fit: candidate hosts across the fleet, from the hosts' running totals.

A search reads a row per host (the limits and totals kept on it), never instance rows. It narrows and ranks
with the decision rendered in SQL (store/fit_sql.py), and the hosts it returns are decided again by
`core.admission.decide` itself before anyone sees them. Counting how hosts fall short takes one pass over
them; on PostgreSQL it runs on a second connection while the best are found, and the best for `spread`
come from walking the room index (`Fleet._walk`). SQLite does both in one statement on one connection.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, TextClause, bindparam, text

from ledger.core.admission import Admit, decide
from ledger.core.charges import AllocationRequest, Ask, DefaultBandwidth
from ledger.core.host import HostState
from ledger.core.placement import (
    GPU,
    LABELS,
    PACK,
    SPREAD,
    Shortfalls,
    check_policy,
    ranked,
    room_after,
)
from ledger.core.resources import RESOURCES
from ledger.store.database import Database
from ledger.store.engine import index_walking_engine
from ledger.store.fit_sql import FitSql
from ledger.store.hosts import Hosts
from ledger.store.tx import HOST_COLUMNS, LockedHost

_MARGIN = 8  # extra rows fetched beyond `limit`, in case decide turns one down
_WALK_ROWS = 512  # fitting hosts a walk reads before it ranks every host instead: past that, ranking
# every fitting host (about 6 ms at 10,000 hosts) costs no more than walking on (bench/fleet.py)
_ORDER = {SPREAD: "DESC", PACK: "ASC"}
# A search on PostgreSQL counts on a second connection while it finds the best: its latency is the longer
# of the two, not their sum (bench/fleet.py), for a second pass over the hosts when `pack` ranks them all.
# Threads only wait here; the database does the work.
_BESIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ledger-count")
_AMOUNTS = ("capacity", "effective_limit", "allocated", "pending", "available")
_FLEET_STATUS = text(
    "SELECT host_id, labels, resource, capacity, effective_limit, allocated, pending, available, "
    "oversub_ratio, source FROM fleet_status ORDER BY host_id"
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host the request fits on: what it has available per resource, and its placement score."""

    host_id: str
    available: Mapping[str, int]
    score: float
    read: LockedHost | None = field(default=None, compare=False, repr=False)  # the row as the search read it
    state: HostState | None = field(default=None, compare=False, repr=False)  # what decide saw in `read`

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host_id, "available": dict(self.available), "score": self.score}


@dataclass(frozen=True, slots=True)
class Search:
    """The answer: the best candidates first, and how many hosts were considered, fit, and fell short."""

    candidates: list[Candidate]
    shortfalls: Shortfalls

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "considered": self.shortfalls.considered,
            "fitting": self.shortfalls.fitting,
            "shortfalls": self.shortfalls.to_dict(),
        }


class Fleet:
    """Candidate searches over every host of the database (see the module docstring)."""

    def __init__(
        self, db: Database, hosts: Hosts, defaults: DefaultBandwidth, reservation_ttl: float
    ) -> None:
        self.db = db
        self.hosts = hosts
        self.defaults = defaults
        self.reservation_ttl = reservation_ttl
        self.postgres = not db.sqlite
        self.fit = FitSql(self.postgres, defaults)
        # walks read down the room index on connections of their own (the planner would rather scan all)
        self.walker: Engine | None = index_walking_engine(db.engine) if self.postgres else None

    def close(self) -> None:
        if self.walker is not None:
            self.walker.dispose()

    def search(
        self,
        request: AllocationRequest,
        *,
        labels: Mapping[str, str],
        exclude: Sequence[str] = (),
        policy: str = SPREAD,
        limit: int = 10,
    ) -> Search:
        """Up to `limit` hosts `request` fits on, best first for `policy`, and how the rest fall short;
        reads only (holds nothing)."""
        check_policy(policy)
        reasons, score, params = self.fit.expressions(request, labels)
        outcome = " ".join(f"WHEN {condition} THEN '{name}'" for condition, name in reasons)
        outcome = f"CASE {outcome} ELSE 'fit' END" if reasons else "'fit'"
        where, params = self._excluding(exclude, params)
        counting: Future[dict[str, int]] | None = None
        if self.postgres:  # count every host's outcome on one connection, find the best on another
            counts_query = _statement(
                f"SELECT outcome, count(*) FROM (SELECT {outcome} AS outcome FROM hosts h WHERE {where}) o "
                "GROUP BY outcome"
            )
            counting = _BESIDE.submit(self._count, counts_query, params)
            counts: dict[str, int] = {}
            fetch = self._best(reasons, score, params, where, policy)
        else:  # SQLite, one connection: one statement, one pass: how many fall where, and the best that fit
            query = _statement(
                f"WITH o AS MATERIALIZED (SELECT h.host_id, {outcome} AS outcome, {score} AS score "
                f"FROM hosts h WHERE {where}) "
                "SELECT outcome, count(*), NULL, NULL FROM o GROUP BY outcome "
                "UNION ALL SELECT * FROM (SELECT 'best', 0, host_id, score FROM o WHERE outcome = 'fit' "
                f"ORDER BY score {_ORDER[policy]}, host_id LIMIT :take) best"
            )
            counts = {}

            def fetch(take: int) -> list[str]:
                with self.db.read() as conn:
                    rows = conn.execute(query, {**params, "take": take}).all()
                counts.clear()
                counts.update({str(r[0]): int(r[1]) for r in rows if r[0] != "best"})
                return [str(r[2]) for r in rows if r[0] == "best"]

        try:
            candidates, refused = self._looking_further(fetch, request, limit)
        except BaseException:
            if counting is not None and not counting.cancel():
                wait([counting])  # it is running: let it give its connection back before this call ends
            raise
        if counting is not None:
            counts = counting.result()
        by_resource = {k: n for k, n in counts.items() if k != "fit" and not k.startswith(LABELS)}
        # Hosts the SQL said fit and `decide` turned down move from fitting to their resource. The count may
        # have read after the best did, and already see a host taken meanwhile as short: move no more than
        # it counted as fitting.
        fitting = counts.get("fit", 0)
        for name, n in refused.items():
            moved = min(n, fitting)
            by_resource[name] = by_resource.get(name, 0) + moved
            fitting -= moved
        by_label = {
            f"{name}={value}": counts.get(f"{LABELS}:{index}", 0)
            for index, (name, value) in enumerate(labels.items())
        }
        return Search(candidates, Shortfalls(sum(counts.values()), fitting, by_resource, by_label))

    def _count(self, query: TextClause, params: dict[str, Any]) -> dict[str, int]:
        """How many hosts fall where: `{outcome: hosts}`, by the search's CASE."""
        with self.db.read() as conn:
            return {str(r[0]): int(r[1]) for r in conn.execute(query, params)}

    def best(
        self,
        request: AllocationRequest,
        *,
        labels: Mapping[str, str],
        exclude: Sequence[str] = (),
        policy: str = SPREAD,
        limit: int = 10,
    ) -> list[Candidate]:
        """The search's candidates without its counts, for `place`: only fitting hosts are scored and
        nothing is grouped, which costs a fraction of `search` on a large fleet (bench/fleet.py)."""
        reasons, score, params = self.fit.expressions(request, labels)
        where, params = self._excluding(exclude, params)
        return self._looking_further(self._best(reasons, score, params, where, policy), request, limit)[0]

    def _best(
        self, reasons: list[tuple[str, str]], score: str, params: dict[str, Any], where: str, policy: str
    ) -> Callable[[int], list[str]]:
        """`fetch(take)`: the `take` best fitting hosts for `policy`, best first. Every fitting host is
        scored and ranked, unless the room index can find them reading fewer (`_walk`)."""
        fits = " AND ".join(f"NOT ({condition})" for condition, _ in reasons) or "1 = 1"
        ranking = _statement(
            f"SELECT h.host_id FROM hosts h WHERE {where} AND {fits} "
            f"ORDER BY {score} {_ORDER[policy]}, h.host_id LIMIT :take"
        )

        def every_host(take: int) -> list[str]:
            with self.db.read() as conn:
                return [str(r[0]) for r in conn.execute(ranking, {**params, "take": take})]

        return self._walk(fits, score, params, where, every_host) if self._walks(policy) else every_host

    def _walks(self, policy: str) -> bool:
        """Whether the best hosts may come from walking the room index (`_walk`) rather than from scoring
        every host: for spread, where the index is (PostgreSQL; bench/fleet.py measures what it is worth)."""
        return self.postgres and policy == SPREAD

    def _walk(
        self,
        fits: str,
        score: str,
        params: dict[str, Any],
        where: str,
        every_host: Callable[[int], list[str]],
    ) -> Callable[[int], list[str]]:
        """`fetch(take)` for spread by the room index: read fitting hosts from the most room down, in growing
        batches, until the `take`-th best score beats the room of every host not yet read. A charge only
        lowers a host's room (core.placement.room), so no unread host can score above the room where the
        walk stopped; ties are read on, not guessed. A request much larger than the hosts' room ranks them
        unlike their room does (a big VM takes a bigger share of a small host): when the walk has read
        `_WALK_ROWS` without settling, every fitting host is ranked instead (`every_host`)."""
        head = f"SELECT h.host_id, {score} AS score, h.room FROM hosts h WHERE {where} AND {fits}"
        order = "ORDER BY h.room DESC, h.host_id LIMIT :batch"
        # per batch, only what the walk needs back: the batch's best `take`, and its last row and size
        answer = (
            "SELECT 'best', host_id, score, CAST(NULL AS FLOAT), CAST(NULL AS BIGINT) FROM "
            "(SELECT host_id, score FROM batch ORDER BY score DESC, host_id LIMIT :take) best "
            "UNION ALL SELECT * FROM (SELECT 'last', host_id, CAST(NULL AS FLOAT), room, "
            "(SELECT count(*) FROM batch) FROM batch ORDER BY room, host_id DESC LIMIT 1) last"
        )
        first = _statement(f"WITH batch AS MATERIALIZED ({head} {order}) {answer}")
        after = _statement(
            f"WITH batch AS MATERIALIZED ({head} AND h.room <= :room "
            f"AND (h.room < :room OR h.host_id > :after) {order}) {answer}"
        )

        def fetch(take: int) -> list[str]:
            best: list[tuple[str, float]] = []
            batch, read, settled = take * 2, 0, True
            with self.db.read(on=self.walker) as conn:
                rows = conn.execute(first, {**params, "batch": batch, "take": take}).all()
                while True:
                    # a host written between two batches may be read twice: its later score stands
                    scores = dict(best) | {str(r[1]): float(r[2]) for r in rows if r[0] == "best"}
                    best = ranked(list(scores.items()), SPREAD)[:take]
                    last = next((r for r in rows if r[0] == "last"), None)
                    if last is None or int(last[4]) < batch:  # every fitting host has been read
                        break
                    read += batch
                    unread_at_most = float(last[3])
                    if len(best) == take and best[-1][1] > unread_at_most:
                        break
                    if read >= _WALK_ROWS:
                        settled = False
                        break
                    batch *= 2
                    bounds = {"batch": batch, "take": take, "room": unread_at_most, "after": str(last[1])}
                    rows = conn.execute(after, {**params, **bounds}).all()
            if not settled:  # ranked on its own connection, once the walk's is back in the pool
                return every_host(take)
            return [host for host, _ in best]

        return fetch

    def _excluding(self, exclude: Sequence[str], params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The WHERE condition that leaves out `exclude`, and the parameters with the list bound."""
        if not exclude:
            return "1 = 1", params
        return "h.host_id NOT IN :exclude", {**params, "exclude": list(exclude)}

    def _looking_further(
        self, fetch: Callable[[int], list[str]], request: AllocationRequest, limit: int
    ) -> tuple[list[Candidate], dict[str, int]]:
        """Fetch the best host ids (`fetch(take)`, best first) until `decide` confirms `limit` of them or the
        hosts run out: the confirmed candidates, and what decide turned down by resource."""
        take = limit + _MARGIN
        while True:
            best = fetch(take)
            candidates, refused = self._confirmed(best, request, limit)
            if len(candidates) >= limit or len(best) < take:
                return candidates, refused
            take *= 2  # the decision turned some down: look further

    def status(self) -> list[dict[str, Any]]:
        """Every host with its labels and each resource's status, as `fleet_status` reports it (from the
        running totals, in one query)."""
        hosts: dict[str, dict[str, Any]] = {}
        with self.db.read() as conn:
            for row in conn.execute(_FLEET_STATUS).mappings():
                labels = row["labels"]
                if isinstance(labels, str):  # SQLite keeps JSON as text; psycopg reads JSONB as a dict
                    labels = json.loads(labels)
                host = hosts.setdefault(
                    row["host_id"], {"host": row["host_id"], "labels": dict(labels or {})}
                )
                host[row["resource"]] = {
                    "type": row["resource"],
                    **{
                        k: int(row[k])
                        for k in ("capacity", "effective_limit", "allocated", "pending", "available")
                    },
                    "oversub_ratio": float(row["oversub_ratio"]),
                    "source": row["source"],
                }
        return [
            {"host": h["host"], "labels": h["labels"], **{r.value: h[r.value] for r in RESOURCES}}
            for h in hosts.values()
            if all(r.value in h for r in RESOURCES)
        ]

    def states(self, host_ids: Sequence[str]) -> dict[str, HostState]:
        """The hosts as a search reads them (not locked; expired holds still count until swept)."""
        return {host_id: state for host_id, (_, state) in self._read(host_ids).items()}

    def _read(self, host_ids: Sequence[str]) -> dict[str, tuple[LockedHost, HostState]]:
        """The hosts' rows and what admission would decide on, as read now (not locked)."""
        query = text(f"SELECT {', '.join(HOST_COLUMNS)} FROM hosts WHERE host_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        with self.db.read() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                read = [self._host(row) for row in conn.execute(query, {"ids": list(host_ids)})]
                self.hosts.load(cursor, read)  # the limits of hosts not seen before, in two statements
                return {host.host_id: (host, self.hosts.state(cursor, host)) for host in read}
            finally:
                cursor.close()

    def _confirmed(
        self, best: Sequence[str], request: AllocationRequest, limit: int
    ) -> tuple[list[Candidate], dict[str, int]]:
        """The best hosts, in order, each decided again by `decide`; what it turned down, by resource."""
        read = self._read(best) if best else {}
        found: list[Candidate] = []
        refused: dict[str, int] = {}
        for host_id in best:
            host, state = read[host_id]
            verdict = decide(state, [Ask(request)], {}, self.defaults, self.reservation_ttl).outcomes[0]
            if isinstance(verdict, Admit):
                if len(found) < limit:
                    found.append(_candidate(host, state, verdict))
            else:
                name = str(getattr(verdict, "details", {}).get("resource", GPU))
                refused[name] = refused.get(name, 0) + 1
        return found, refused

    def _host(self, row: Any) -> LockedHost:
        """A host row as read (not locked: a search holds nothing)."""
        return LockedHost.from_row(row[: len(HOST_COLUMNS)], self.db.sql.read_time)


@functools.lru_cache(maxsize=256)  # a search has few shapes: parse each one's SQL once, not per call
def _statement(sql: str) -> TextClause:
    """`sql` as a statement; an `exclude` list in it is bound as one parameter per host id."""
    statement = text(sql)
    if ":exclude" in sql:
        statement = statement.bindparams(bindparam("exclude", expanding=True))
    return statement


def _candidate(host: LockedHost, state: HostState, admit: Admit) -> Candidate:
    left = {r.value: state.status(r).available for r in RESOURCES}
    return Candidate(state.host_id, left, room_after(state, admit.charge), host, state)
