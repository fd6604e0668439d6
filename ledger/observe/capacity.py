"""Per host and resource: capacity, effective limit, allocated, pending and available, read at scrape time
from the running totals each host row keeps (one query over hosts × resources, never a sum over instances),
so a scrape costs the same with ten instances or a million.

The figures are the admission path's own: `pending` includes held reservations past their TTL until the
host is next locked (they are swept then), and `available` is the `avail_*` column written with the totals.
Resources have different units, so each sample carries a `unit` label, as kube-state-metrics does for node
capacity; compare resources as fractions of their effective limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, select

from ledger.core.capacity import available
from ledger.core.resources import RESOURCES, ResourceType
from ledger.observe.database import ObserveDatabase, describe
from ledger.store.sql import capacities, hosts
from ledger.store.totals import ALLOC_COLUMNS, AVAIL_COLUMNS, TOTAL_COLUMNS, allocated, pending

log = logging.getLogger("ledger.observe")

GPU = "gpu"
UNITS: Mapping[str, str] = {
    ResourceType.CPU.value: "vcpu",
    ResourceType.MEMORY.value: "byte",
    ResourceType.DISK.value: "byte",
    ResourceType.NETWORK.value: "byte_per_second",
    ResourceType.DISK_IO.value: "byte_per_second",
    GPU: "slot",
}
DISK_PARTS = tuple(ALLOC_COLUMNS[ResourceType.DISK])  # images_bytes, oci_cache_bytes, volumes_bytes, ...
_HOST_COLUMNS = (*TOTAL_COLUMNS, *AVAIL_COLUMNS, "gpu_total", "gpu_busy")
QUERY = (
    select(
        hosts.c.host_id,
        capacities.c.resource,
        capacities.c.capacity,
        capacities.c.effective_limit,
        capacities.c.oversub_ratio,
        *(hosts.c[name] for name in _HOST_COLUMNS),
    )
    .select_from(hosts.outerjoin(capacities, capacities.c.host_id == hosts.c.host_id))
    .order_by(hosts.c.host_id)
)


class UsedSource(Protocol):
    """What hosts really use, per resource in the units of UNITS (e.g. the usage sampler's latest rollup):
    the seam for `ledger_used`, which is exported only once a source exists. Read in the scrape's
    connection, so it must cost O(hosts × resources) too."""

    def used(self, conn: Connection) -> Mapping[tuple[str, str], float]: ...


@dataclass(slots=True)
class _Host:
    totals: dict[str, int]
    rows: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # resource → capacity, limit, ratio


class CapacityCollector(Collector):
    """`ledger_capacity`, `ledger_effective_limit`, `ledger_allocated`, `ledger_pending`,
    `ledger_available`, `ledger_oversubscription_ratio`, `ledger_disk_allocated_bytes` and
    `ledger_database_up`, read at each scrape (see the module docstring)."""

    def __init__(self, db: ObserveDatabase, used: UsedSource | None = None) -> None:
        self._db = db
        self._used = used
        self._failing = False  # log when reading starts failing and when it works again, not every scrape

    def describe(self) -> Iterable[Metric]:
        return _Families(self._used is not None).all()

    def collect(self) -> Iterable[Metric]:
        families = _Families(self._used is not None)
        try:
            with self._db.read() as conn:
                found = _read(conn)
                used = self._used.used(conn) if self._used is not None else {}
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "metrics cannot read the database (%s); scrapes say ledger_database_up 0", describe(exc)
                )
            self._failing = True
            families.up.add_metric([], 0)
            return families.all()
        if self._failing:
            log.info("metrics read the database again")
        self._failing = False
        families.up.add_metric([], 1)
        for host_id, host in found.items():
            families.add_host(host_id, host)
        for (host_id, resource), value in used.items():
            families.add_used(host_id, resource, value)
        return families.all()


def _read(conn: Connection) -> dict[str, _Host]:
    found: dict[str, _Host] = {}
    for row in conn.execute(QUERY).mappings():
        host = found.get(row["host_id"])
        if host is None:
            host = found[row["host_id"]] = _Host({name: int(row[name] or 0) for name in _HOST_COLUMNS})
        if row["resource"] is not None:
            host.rows[row["resource"]] = (row["capacity"], row["effective_limit"], row["oversub_ratio"])
    return found


class _Families:
    """One scrape's metric families, filled host by host."""

    def __init__(self, with_used: bool) -> None:
        labels = ["host", "resource", "unit"]
        self.capacity = GaugeMetricFamily(
            "ledger_capacity", "What the host has of the resource (discovered or configured)", labels=labels
        )
        self.limit = GaugeMetricFamily(
            "ledger_effective_limit",
            "How much of the resource may be promised: capacity × oversubscription ratio (gpu: slots)",
            labels=labels,
        )
        self.allocated = GaugeMetricFamily(
            "ledger_allocated",
            "What active instances, volumes, images and the OCI cache hold (gpu: slots in use)",
            labels=labels,
        )
        self.pending = GaugeMetricFamily(
            "ledger_pending", "What held reservations hold (until consumed, released or swept)", labels=labels
        )
        self.available = GaugeMetricFamily(
            "ledger_available",
            "What is left to promise: max(0, effective limit − allocated − pending)",
            labels=labels,
        )
        self.ratio = GaugeMetricFamily(
            "ledger_oversubscription_ratio",
            "The ratio in force for the resource",
            labels=["host", "resource"],
        )
        self.disk = GaugeMetricFamily(
            "ledger_disk_allocated_bytes",
            "Allocated disk by part: images, oci_cache, volumes, overlays",
            labels=["host", "part"],
        )
        self.up = GaugeMetricFamily(
            "ledger_database_up", "1 if this scrape could read the ledger's database, else 0"
        )
        self.used = (
            GaugeMetricFamily("ledger_used", "What the host's VMs really use of the resource", labels=labels)
            if with_used
            else None
        )

    def all(self) -> list[Metric]:
        families: list[Metric] = [
            self.capacity,
            self.limit,
            self.allocated,
            self.pending,
            self.available,
            self.ratio,
            self.disk,
            self.up,
        ]
        return [*families, self.used] if self.used is not None else families

    def add_host(self, host_id: str, host: _Host) -> None:
        totals = host.totals
        # a host row an early event made has no capacities yet: nothing may be promised on it (as status says)
        for resource, alloc, pend, left in zip(
            RESOURCES, allocated(totals), pending(totals), (totals[c] for c in AVAIL_COLUMNS), strict=True
        ):
            capacity, limit, ratio = host.rows.get(resource.value, (0, 0, None))
            self._add(host_id, resource.value, capacity, limit, alloc, pend, left)
            if ratio is not None:
                self.ratio.add_metric([host_id, resource.value], ratio)
        gpu_total = totals["gpu_total"]
        if gpu_total:
            used = max(totals["alloc_gpu"], totals["gpu_busy"])  # admission's count of slots in use
            held = totals["pend_gpu"]
            self._add(host_id, GPU, gpu_total, gpu_total, used, held, available(gpu_total, used, held))
        for part in DISK_PARTS:
            self.disk.add_metric([host_id, part.removesuffix("_bytes")], totals[part])

    def add_used(self, host_id: str, resource: str, value: float) -> None:
        assert self.used is not None
        self.used.add_metric([host_id, resource, UNITS[resource]], value)

    def _add(
        self, host_id: str, resource: str, capacity: int, limit: int, alloc: int, pend: int, left: int
    ) -> None:
        labels = [host_id, resource, UNITS[resource]]
        self.capacity.add_metric(labels, capacity)
        self.limit.add_metric(labels, limit)
        self.allocated.add_metric(labels, alloc)
        self.pending.add_metric(labels, pend)
        self.available.add_metric(labels, left)
