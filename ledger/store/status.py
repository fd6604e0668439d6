"""Reading a host: the seed's FullResourceStatus (plus pending) with its instances a page at a time, one
resource's status, and the seed's checks built on them (default bandwidths, image pulls). Every read locks
the host, so expired holds are swept before anything is counted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import bindparam, func, select

from ledger.core import capacity as rules
from ledger.core.capacity import ResourceStatus
from ledger.core.charges import DefaultBandwidth
from ledger.core.errors import InvalidRequest
from ledger.core.host import DISK_IO, NETWORK
from ledger.core.resources import RUNNING, ResourceType
from ledger.core.results import (
    MAX_PAGE,
    AllocationBreakdown,
    DiskBreakdown,
    FullStatus,
    InstanceUtilizationInfo,
)
from ledger.core.units import MAX_AMOUNT
from ledger.store.database import Database
from ledger.store.hosts import Hosts
from ledger.store.sql import hosts as hosts_table
from ledger.store.sql import instances
from ledger.store.tx import unknown_host
from ledger.store.usage import read_host_used


class Status:
    """What `status`, `can_allocate`, `defaults` and `image_pull_check` read."""

    def __init__(self, db: Database, hosts: Hosts) -> None:
        self.db = db
        self.hosts = hosts
        active = instances.c.active & ~instances.c.deleted
        self._page = (
            select(instances)
            .where(instances.c.host_id == bindparam("host"), active)
            .order_by(instances.c.instance_id)
        )
        self._count = (
            select(func.count())
            .select_from(instances)
            .where(instances.c.host_id == bindparam("host"), active)
        )
        self._running = (
            select(instances)
            .where(
                instances.c.host_id == bindparam("host"), instances.c.state == RUNNING, ~instances.c.deleted
            )
            .order_by(instances.c.instance_id)
        )
        self._host_exists = select(hosts_table.c.host_id).where(hosts_table.c.host_id == bindparam("host"))

    def full(self, host_id: str, *, limit: int | None = None, after: str | None = None) -> FullStatus:
        """The host's status with up to `limit` active instances (all when None) after instance id `after`."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PAGE
        ):
            raise InvalidRequest(f"limit must be a whole number from 0 to {MAX_PAGE}", field="limit")
        with self.db.transaction() as tx:
            conn = tx.conn
            assert conn is not None
            host = tx.lock(host_id)
            limits = self.hosts.limits(tx.cursor, host)
            state = self.hosts.state_of(host, limits)
            page: list[AllocationBreakdown] = []
            total = 0
            following = None
            if limit != 0:
                query = self._page.params(host=host_id)
                if after is not None:
                    query = query.where(instances.c.instance_id > after)
                if limit is not None:
                    query = query.limit(limit + 1)
                rows = list(conn.execute(query))
                if limit is not None and len(rows) > limit:
                    rows = rows[:limit]
                    following = rows[-1].instance_id
                page = [_breakdown(r) for r in rows]
            total = conn.execute(self._count.params(host=host_id)).scalar_one()
            gpu: dict[str, Any] | None = None
            if limits.gpu is not None:
                gpu = dict(limits.gpu)
                gpu["used_slots"] = max(host.totals["alloc_gpu"], host.gpu_busy)
                gpu["pending_slots"] = host.totals["pend_gpu"]
            totals = host.totals
            used = read_host_used(conn, host_id)
            statuses = {
                resource: replace(status, used=used[resource].latest) if resource in used else status
                for resource, status in state.statuses().items()
            }
            return FullStatus(
                host_id=host_id,
                resources=statuses,
                disk_breakdown=DiskBreakdown(
                    images_bytes=totals["images_bytes"],
                    oci_cache_bytes=totals["oci_cache_bytes"],
                    volumes_bytes=totals["volumes_bytes"],
                    overlays_bytes=totals["overlays_bytes"],
                ),
                gpu=gpu,
                allocations=page,
                allocations_total=total,
                allocations_next=following,
                labels=limits.labels,
            )

    def running(self, host_id: str) -> list[InstanceUtilizationInfo]:
        """The seed's InstanceUtilizationInfo list: the host's instances in state Running (a read)."""
        with self.db.read() as conn:
            if conn.execute(self._host_exists, {"host": host_id}).first() is None:
                raise unknown_host(host_id)
            return [
                InstanceUtilizationInfo(
                    r.instance_id, r.name, r.hypervisor_pid, r.tap_device or "", r.vcpus, r.memory_bytes
                )
                for r in conn.execute(self._running, {"host": host_id})
            ]

    def resource(self, host_id: str, resource: ResourceType) -> ResourceStatus:
        """One resource's status on a host."""
        with self.db.transaction() as tx:
            host = tx.lock(host_id)
            return self.hosts.state(tx.cursor, host).status(resource)

    def default_bandwidth(
        self, host_id: str, vcpus: int, defaults: DefaultBandwidth, burst_multiplier: float
    ) -> dict[str, int]:
        """The seed's DefaultNetworkBandwidth (symmetric) and DefaultDiskIOBandwidth (sustained, burst) for
        an instance of `vcpus`: what an instance that states none is charged (`DefaultBandwidth`)."""
        rules.check_amount("vcpus", vcpus)
        with self.db.transaction() as tx:
            state = self.hosts.state(tx.cursor, tx.lock(host_id))
        network = defaults.share(state, vcpus, NETWORK)
        disk_io = defaults.share(state, vcpus, DISK_IO)
        return {
            "network_download_bps": network,
            "network_upload_bps": network,
            "disk_io_bps": disk_io,
            "disk_io_burst_bps": min(int(disk_io * burst_multiplier), MAX_AMOUNT),
        }

    def image_pull_check(self, host_id: str, max_image_storage: float) -> dict[str, int]:
        """Raise InsufficientResources unless an image pull fits: ≥ 5 GiB of disk left to promise, and
        images plus OCI cache under `max_image_storage` of disk capacity."""
        with self.db.transaction() as tx:
            host = tx.lock(host_id)
            disk = self.hosts.state(tx.cursor, host).status(ResourceType.DISK)
            current = host.totals["images_bytes"] + host.totals["oci_cache_bytes"]
        rules.check_disk_for_pull(disk.available)
        maximum = rules.max_image_storage_bytes(disk.capacity, max_image_storage)
        rules.check_image_storage(current, maximum, max_image_storage)
        return {
            "disk_available": disk.available,
            "image_storage_bytes": current,
            "max_image_storage_bytes": maximum,
        }


def _breakdown(r: Any) -> AllocationBreakdown:
    return AllocationBreakdown(
        instance_id=r.instance_id,
        instance_name=r.name,
        state=r.state,
        cpu=r.vcpus,
        memory_bytes=r.memory_bytes,
        disk_bytes=r.overlay_bytes + r.volume_overlay_bytes + r.volume_bytes,
        network_download_bps=r.network_download_bps,
        network_upload_bps=r.network_upload_bps,
        disk_io_bps=r.disk_io_bps,
        gpu=r.gpu,
    )
