"""Hosts and their capacities: registration from discovery or `host.capacity` events, and the host state
admission decides on (capacities cached per process while the host's capacity_version holds)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update

from ledger.core import capacity as rules
from ledger.core.errors import InvalidRequest
from ledger.core.gpu import GPUStatus
from ledger.core.host import GpuSlots, HostState, ResourceLimit
from ledger.core.resources import RESOURCES, Capacity, ResourceType, Source
from ledger.core.results import ApplyResult
from ledger.store import journal
from ledger.store.database import Database
from ledger.store.journal import EventMark
from ledger.store.sql import Cursor, capacities, hosts
from ledger.store.totals import allocated, pending
from ledger.store.tx import LockedHost, Tx

_UNDETECTED = ResourceLimit(0, 0, 0.0, Source.UNDETECTED)
# the capacities default bandwidths are shares of (kept on the host row for fleet searches)
_DEFAULTED_FROM = (ResourceType.CPU, ResourceType.NETWORK, ResourceType.DISK_IO)


@dataclass(frozen=True, slots=True)
class HostLimits:
    """What changes only with a host's capacity_version: its limits (RESOURCES order) and GPU inventory."""

    limits: tuple[ResourceLimit, ...]
    gpu: dict[str, Any] | None = None  # discovery's GPUStatus as JSON
    profiles: dict[str, int] = field(default_factory=dict)  # vGPU profile name → instances available
    labels: dict[str, str] = field(default_factory=dict)


class Hosts:
    """Registration and the host state that admission, status and records read."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._select_limits = (
            "SELECT host_id, resource, capacity, effective_limit, oversub_ratio, source, hint "
            "FROM capacities WHERE host_id IN ({})"
        )
        self._select_gpu = "SELECT host_id, gpu_status, labels FROM hosts WHERE host_id IN ({})"
        self._cache: dict[str, tuple[int, HostLimits]] = {}

    def register(
        self,
        host_id: str,
        found: Mapping[ResourceType, Capacity],
        ratios: Mapping[ResourceType, float],
        gpu: GPUStatus | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        version: int | None = None,
        mark: EventMark | None = None,
        then: Callable[[Tx, LockedHost, str], None] | None = None,
    ) -> ApplyResult:
        """Create or refresh a host's capacities, ratios, GPU inventory and labels (usage is left alone).

        A `host.capacity` event passes its `version` and `mark`: a redelivery is a duplicate and an older
        snapshot delivered late is stale, as for every other entity. `then` runs in the same transaction
        once the new capacities are in place (with the cause to record).
        """
        if not host_id or len(host_id) > 255:
            raise InvalidRequest("host id must be 1 to 255 characters", field="host")
        for resource in ResourceType:
            ratio = ratios.get(resource)
            if ratio is not None and not _valid_ratio(ratio):
                raise InvalidRequest(
                    f"oversubscription ratio for {resource.value} must be greater than 0, got {ratio}",
                    field="oversub_ratio",
                )
        with self.db.transaction() as tx:
            conn = tx.conn
            assert conn is not None
            host = tx.lock(host_id, create=True)
            if journal.seen(tx, mark):
                return ApplyResult("duplicate", host_id, version or 0)
            reported = conn.execute(
                select(hosts.c.reported_version).where(hosts.c.host_id == host_id)
            ).scalar_one()
            if version is not None and reported is not None and version <= reported:
                journal.mark(tx, mark, host_id, host_id, version, "stale")
                return ApplyResult("stale", host_id, version)
            now = self.db.clock()
            limits = {
                r: rules.effective_limit(found[r].capacity, rules.oversub_ratio(r, ratios.get(r)))
                for r in ResourceType
            }
            conn.execute(
                update(hosts)
                .where(hosts.c.host_id == host_id)
                .values(
                    reported_version=version if version is not None else reported,
                    gpu_status=json.dumps(gpu.to_dict()) if gpu else None,
                    gpu_total=gpu.total_slots if gpu else 0,
                    gpu_busy=gpu.used_slots if gpu else 0,
                    labels=dict(labels or {}),
                    **{f"limit_{r.value}": limits[r] for r in ResourceType},
                    **{f"capacity_{r.value}": found[r].capacity for r in _DEFAULTED_FROM},
                    capacity_version=hosts.c.capacity_version + 1,
                    updated_at=now,
                )
            )
            host.capacity_version += 1
            host.limits = tuple(limits[r] for r in RESOURCES)
            host.gpu_total = gpu.total_slots if gpu else 0
            host.gpu_busy = gpu.used_slots if gpu else 0
            host.changed = True  # the revision moves: a process that read the old limits must read again
            conn.execute(capacities.delete().where(capacities.c.host_id == host_id))
            rows = []
            for resource in ResourceType:
                cap = found[resource]
                rows.append(
                    {
                        "host_id": host_id,
                        "resource": resource.value,
                        "capacity": cap.capacity,
                        "source": cap.source.value,
                        "hint": cap.hint,
                        "oversub_ratio": rules.oversub_ratio(resource, ratios.get(resource)),
                        "effective_limit": limits[resource],
                        "updated_at": now,
                    }
                )
            conn.execute(insert(capacities), rows)
            if then is not None:
                then(tx, host, mark.event_id if mark else "api")
            journal.mark(tx, mark, host_id, host_id, version or 0, "applied")
            return ApplyResult("applied", host_id, version or 0)

    def ids(self) -> list[str]:
        with self.db.transaction() as tx:
            assert tx.conn is not None
            return list(tx.conn.execute(select(hosts.c.host_id).order_by(hosts.c.host_id)).scalars())

    def is_registered(self, host_id: str) -> bool:
        """Whether the host has capacities (a host row made by an early event has none yet)."""
        with self.db.transaction() as tx:
            assert tx.conn is not None
            found = tx.conn.execute(
                select(capacities.c.host_id).where(capacities.c.host_id == host_id)
            ).first()
            return found is not None

    def limits(self, cursor: Cursor, host: LockedHost) -> HostLimits:
        """The host's limits and GPU inventory, read again only when its capacity_version moved."""
        cached = self.cached(host.host_id, host.capacity_version)
        if cached is not None:
            return cached
        self.load(cursor, [host])
        return self._cache[host.host_id][1]

    def load(self, cursor: Cursor, found: Sequence[LockedHost]) -> None:
        """Read the limits of those of the hosts this process has not cached at their capacity_version, in
        two statements however many there are (a fleet search confirms hosts it has never seen)."""
        stale = {
            h.host_id: h.capacity_version for h in found if self.cached(h.host_id, h.capacity_version) is None
        }
        if not stale:
            return
        ids = sorted(stale)
        marks = self.db.sql.marks(len(ids))
        cursor.execute(self._select_limits.format(marks), ids)
        rows: dict[str, dict[str, Any]] = {}
        for row in cursor.fetchall():
            rows.setdefault(row[0], {})[row[1]] = row
        cursor.execute(self._select_gpu.format(marks), ids)
        for host_id, text, stored_labels in cursor.fetchall():
            limits = []
            for resource in RESOURCES:
                row = rows.get(host_id, {}).get(resource.value)
                if row is None:  # a host row made by an early event: nothing registered yet
                    limits.append(_UNDETECTED)
                    continue
                _, _, cap, limit, ratio, source, hint = row
                limits.append(ResourceLimit(cap, limit, ratio, Source(source), hint))
            gpu = json.loads(text) if text else None
            profiles = {p["name"]: int(p.get("available", 0)) for p in (gpu or {}).get("profiles", [])}
            # SQLite keeps JSON as text; psycopg reads JSONB as a dict
            labels = json.loads(stored_labels) if isinstance(stored_labels, str) else stored_labels
            limits_of = HostLimits(tuple(limits), gpu, profiles, dict(labels or {}))
            self._cache[host_id] = (stale[host_id], limits_of)

    def cached(self, host_id: str, capacity_version: int) -> HostLimits | None:
        """The host's limits at `capacity_version`, if this process has them."""
        cached = self._cache.get(host_id)
        return cached[1] if cached is not None and cached[0] == capacity_version else None

    def state(self, cursor: Cursor, host: LockedHost) -> HostState:
        """What admission decides on: limits, running totals and GPU slots as they stand now."""
        return self.state_of(host, self.limits(cursor, host))

    @staticmethod
    def state_of(host: LockedHost, limits: HostLimits) -> HostState:
        totals = host.totals
        gpu = None
        if host.gpu_total:
            gpu = GpuSlots(
                mode=(limits.gpu or {}).get("mode", "passthrough"),
                total=host.gpu_total,
                used=max(totals["alloc_gpu"], host.gpu_busy),
                pending=totals["pend_gpu"],
                profiles=limits.profiles,
            )
        return HostState(host.host_id, limits.limits, allocated(totals), pending(totals), gpu)


def _valid_ratio(ratio: float) -> bool:
    return isinstance(ratio, int | float) and not isinstance(ratio, bool) and 0 < ratio < math.inf
