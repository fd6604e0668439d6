"""Where does this VM fit: candidate hosts across the fleet, from the hosts' running totals.

One statement reads a row per host (the limits and totals kept on it), so a search never sums instance
rows. It renders `core.admission.decide` in SQL to narrow and rank: each host's outcome is the first
resource, in admission's order, whose request exceeds what is available (the same `available` formula, the
same charges and bandwidth defaults), else the GPU slots, else `fit`; a fitting host's score is
`core.placement.room_after`. The hosts it returns are decided again by `decide` itself before anyone sees
them; a test holds the rendering equal to the decision on random fleets.

SQLite computes a defaulted bandwidth in 64-bit integers (a product past 2⁶³ becomes a float there, so an
extreme host may be ranked on an approximation; `decide` still confirms it); PostgreSQL in NUMERIC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, text

from ledger.core.admission import Admit, decide
from ledger.core.charges import AllocationRequest, Ask, DefaultBandwidth
from ledger.core.host import CHECK_ORDER, HostState
from ledger.core.placement import GPU, LABELS, SPREAD, Shortfalls, room_after
from ledger.core.resources import RESOURCES
from ledger.store.database import Database
from ledger.store.hosts import Hosts
from ledger.store.totals import ALLOC_COLUMNS, PEND_COLUMN, TOTAL_COLUMNS
from ledger.store.tx import HOST_COLUMNS, LockedHost
from ledger.store.views import available_sql

_MARGIN = 8  # extra rows fetched beyond `limit`, in case decide turns one down


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host the request fits on: what it has available per resource, and its placement score."""

    host_id: str
    available: Mapping[str, int]
    score: float

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

    def search(
        self,
        request: AllocationRequest,
        *,
        labels: Mapping[str, str],
        exclude: Sequence[str] = (),
        policy: str = SPREAD,
        limit: int = 10,
    ) -> Search:
        """Up to `limit` hosts `request` fits on, best first for `policy`; reads only (holds nothing)."""
        outcome, score, params = self._expressions(request, labels)
        where = "h.host_id NOT IN :exclude" if exclude else "1 = 1"
        params["exclude"] = tuple(exclude)
        rows = f"SELECT h.host_id, {outcome} AS outcome FROM hosts h WHERE {where}"
        count = text(f"SELECT outcome, count(*) FROM ({rows}) o GROUP BY outcome")
        order = "DESC" if policy == SPREAD else "ASC"
        best = text(
            f"SELECT {', '.join(f'h.{c}' for c in HOST_COLUMNS)}, {score} AS score FROM hosts h "
            f"WHERE {where} AND ({outcome}) = 'fit' "
            f"ORDER BY score {order}, h.host_id LIMIT :take OFFSET :skip"
        )
        if exclude:
            count = count.bindparams(bindparam("exclude", expanding=True))
            best = best.bindparams(bindparam("exclude", expanding=True))
        else:
            del params["exclude"]
        with self.db.read() as conn:
            counts: dict[str, int] = {str(k): int(n) for k, n in conn.execute(count, params).all()}
            candidates, refused = self._confirmed(conn, best, params, request, limit)
        considered = sum(counts.values())
        by_resource = {k: int(v) for k, v in counts.items() if k not in {"fit"} and not k.startswith(LABELS)}
        for name, n in refused.items():
            by_resource[name] = by_resource.get(name, 0) + n
        by_label = {}
        for index, (name, value) in enumerate(labels.items()):
            by_label[f"{name}={value}"] = int(counts.get(f"{LABELS}:{index}", 0))
        fitting = int(counts.get("fit", 0)) - sum(refused.values())
        return Search(candidates, Shortfalls(considered, fitting, by_resource, by_label))

    def states(self, host_ids: Sequence[str]) -> dict[str, HostState]:
        """The hosts as a search reads them (not locked; expired holds still count until swept)."""
        query = text(f"SELECT {', '.join(HOST_COLUMNS)} FROM hosts WHERE host_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        with self.db.read() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                return {
                    row[0]: self.hosts.state(cursor, self._host(row))
                    for row in conn.execute(query, {"ids": list(host_ids)})
                }
            finally:
                cursor.close()

    def _confirmed(
        self,
        conn: Connection,
        best: TextClause,
        params: dict[str, Any],
        request: AllocationRequest,
        limit: int,
    ) -> tuple[list[Candidate], dict[str, int]]:
        """The best rows, each decided again by `decide`; what it turned down, by the resource it named."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        found: list[Candidate] = []
        refused: dict[str, int] = {}
        skip = 0
        try:
            while len(found) < limit:
                batch = conn.execute(
                    best, {**params, "take": limit - len(found) + _MARGIN, "skip": skip}
                ).all()
                skip += len(batch)
                for row in batch:
                    state = self.hosts.state(cursor, self._host(row))
                    verdict = decide(state, [Ask(request)], {}, self.defaults, self.reservation_ttl).outcomes[
                        0
                    ]
                    if isinstance(verdict, Admit):
                        if len(found) < limit:
                            found.append(_candidate(state, verdict))
                    else:
                        name = str(getattr(verdict, "details", {}).get("resource", GPU))
                        refused[name] = refused.get(name, 0) + 1
                if len(batch) < limit - len(found) + _MARGIN or not batch:
                    break
        finally:
            cursor.close()
        return found, refused

    def _host(self, row: Any) -> LockedHost:
        """A host row as read (not locked: a search holds nothing)."""
        values = dict(zip(HOST_COLUMNS, row[: len(HOST_COLUMNS)], strict=True))
        return LockedHost(
            values["host_id"],
            values["capacity_version"],
            values["revision"],
            self.db.sql.read_time(values["next_expiry"]),
            values["gpu_total"],
            values["gpu_busy"],
            {c: values[c] for c in TOTAL_COLUMNS},
        )

    def _expressions(
        self, request: AllocationRequest, labels: Mapping[str, str]
    ) -> tuple[str, str, dict[str, Any]]:
        """The outcome (`labels:N`, a resource's name, `gpu` or `fit`) and score of a host as SQL, and their
        parameters."""
        params: dict[str, Any] = {
            "vcpus": request.vcpus,
            "memory": request.memory_bytes,
            "disk": request.disk_bytes,
        }
        available = {
            r: available_sql(
                f"h.limit_{r.value}",
                " + ".join(f"h.{c}" for c in ALLOC_COLUMNS[r]),
                f"h.{PEND_COLUMN[r]}",
            )
            for r in RESOURCES
        }
        charge = {
            "cpu": ":vcpus",
            "memory": ":memory",
            "disk": ":disk",
            "network": self._network(request, params),
            "disk_io": self._bandwidth(request.disk_io_bps, "disk_io", "disk_io", params),
        }
        cases = []
        for index, (name, value) in enumerate(labels.items()):
            params[f"label_name_{index}"] = self._label_key(name)
            params[f"label_value_{index}"] = value
            cases.append(f"WHEN {self._label(index)} THEN '{LABELS}:{index}'")
        for position in CHECK_ORDER:
            resource = RESOURCES[position].value
            amount = charge[resource]
            cases.append(
                f"WHEN {amount} > 0 AND {amount} > {available[RESOURCES[position]]} THEN '{resource}'"
            )
        if request.wants_gpu:
            cases.append(f"WHEN {self._gpu_short(request, params)} THEN '{GPU}'")
        outcome = f"CASE {' '.join(cases)} ELSE 'fit' END"
        least = "LEAST" if self.postgres else "min"
        fractions = ", ".join(
            f"CASE WHEN h.limit_{r.value} > 0 THEN CAST(({available[r]}) - ({charge[r.value]}) AS FLOAT) "
            f"/ CAST(h.limit_{r.value} AS FLOAT) ELSE 1.0 END"
            for r in RESOURCES
        )
        return outcome, f"{least}(1.0, {fractions})", params

    def _bandwidth(self, stated: int | None, name: str, capacity: str, params: dict[str, Any]) -> str:
        """A bandwidth as charged: the stated amount, or the default (the vCPU share of the capacity)."""
        if stated is not None:
            params[name] = stated
            return f":{name}"
        if not self.defaults.enabled:
            return "0"
        source = f"h.limit_{capacity}" if self.defaults.uses_ratio else f"h.capacity_{capacity}"
        product = f"CAST(:vcpus AS NUMERIC) * {source}" if self.postgres else f":vcpus * {source}"
        share = f"FLOOR({product} / h.capacity_cpu)" if self.postgres else f"({product}) / h.capacity_cpu"
        return f"(CASE WHEN h.capacity_cpu > 0 AND :vcpus > 0 THEN {share} ELSE 0 END)"

    def _network(self, request: AllocationRequest, params: dict[str, Any]) -> str:
        down = self._bandwidth(request.network_download_bps, "download", "network", params)
        up = self._bandwidth(request.network_upload_bps, "upload", "network", params)
        return f"(CASE WHEN {down} >= {up} THEN {down} ELSE {up} END)"

    def _gpu_short(self, request: AllocationRequest, params: dict[str, Any]) -> str:
        greatest = "GREATEST" if self.postgres else "max"
        short = f"h.gpu_total = 0 OR h.gpu_total - {greatest}(h.alloc_gpu, h.gpu_busy) - h.pend_gpu < 1"
        if not request.gpu_profile:
            return f"({short})"
        params["profile"] = request.gpu_profile
        if self.postgres:
            offered = "(CAST(h.gpu_status AS JSONB) -> 'profiles')"
            has = f"{offered} @> jsonb_build_array(jsonb_build_object('name', CAST(:profile AS TEXT)))"
            lacks = f"(jsonb_array_length(COALESCE({offered}, '[]'::jsonb)) > 0 AND NOT ({has}))"
        else:
            profiles = "json_each(h.gpu_status, '$.profiles')"
            lacks = (
                f"(EXISTS (SELECT 1 FROM {profiles}) AND NOT EXISTS "
                f"(SELECT 1 FROM {profiles} p WHERE json_extract(p.value, '$.name') = :profile))"
            )
        return f"({short} OR {lacks})"

    def _label(self, index: int) -> str:
        """The host lacks the requested label pair `index`."""
        name, value = f":label_name_{index}", f":label_value_{index}"
        if self.postgres:
            return f"((h.labels ->> {name}) IS NULL OR (h.labels ->> {name}) <> {value})"
        return f"(json_extract(h.labels, {name}) IS NULL OR json_extract(h.labels, {name}) <> {value})"

    def _label_key(self, name: str) -> str:
        return name if self.postgres else f'$."{name}"'


def _candidate(state: HostState, admit: Admit) -> Candidate:
    left = {r.value: state.status(r).available for r in RESOURCES}
    return Candidate(state.host_id, left, room_after(state, admit.charge))
