"""What the ledger's operations return: plain frozen data with a JSON shape, shared by every door."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.core.capacity import ResourceStatus
from ledger.core.charges import Charge
from ledger.core.resources import ResourceType

# a reservation's status
HELD, CONSUMED, RELEASED, EXPIRED = "held", "consumed", "released", "expired"
RESERVATION_STATUSES = (HELD, CONSUMED, RELEASED, EXPIRED)


@dataclass(frozen=True, slots=True)
class Grant:
    """A reservation that was granted (or found again by its idempotency key)."""

    reservation_id: str
    host_id: str
    status: str
    expires_at: datetime
    idempotency_key: str | None
    charge: Charge  # what the hold takes, bandwidth defaults filled in
    replayed: bool = False  # True when an earlier call with the same key granted it

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "reservation_id": self.reservation_id,
            "host": self.host_id,
            "status": self.status,
            "expires_at": self.expires_at.isoformat(),
            "idempotency_key": self.idempotency_key,
            "replayed": self.replayed,
            "charged": self.charge.to_dict(),
            "defaulted": list(self.charge.defaulted),
        }


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    reservation_id: str
    host_id: str
    status: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    instance_id: str | None
    idempotency_key: str | None = None
    charge: Charge | None = None  # what it holds (held) or held (ended), bandwidth defaults filled in

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reservation_id": self.reservation_id,
            "host": self.host_id,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "instance_id": self.instance_id,
            "idempotency_key": self.idempotency_key,
        }
        if self.charge is not None:
            data["charged"] = self.charge.to_dict()
            data["defaulted"] = list(self.charge.defaulted)
        return data


@dataclass(frozen=True, slots=True)
class DiskBreakdown:
    images_bytes: int
    oci_cache_bytes: int
    volumes_bytes: int
    overlays_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "images_bytes": self.images_bytes,
            "oci_cache_bytes": self.oci_cache_bytes,
            "volumes_bytes": self.volumes_bytes,
            "overlays_bytes": self.overlays_bytes,
        }


@dataclass(frozen=True, slots=True)
class AllocationBreakdown:
    """The seed's AllocationBreakdown for one active instance."""

    instance_id: str
    instance_name: str
    state: str
    cpu: int
    memory_bytes: int
    disk_bytes: int
    network_download_bps: int
    network_upload_bps: int
    disk_io_bps: int
    gpu: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "instance_name": self.instance_name,
            "state": self.state,
            "cpu": self.cpu,
            "memory_bytes": self.memory_bytes,
            "disk_bytes": self.disk_bytes,
            "network_download_bps": self.network_download_bps,
            "network_upload_bps": self.network_upload_bps,
            "disk_io_bps": self.disk_io_bps,
            "gpu": self.gpu,
        }


MAX_PAGE = 10_000  # instances in one page of a status (status's `limit`)


@dataclass(frozen=True, slots=True)
class FullStatus:
    """The seed's FullResourceStatus, plus the host id and `pending` in every resource.

    `allocations` is one page of the active instances, in instance id order: `allocations_total` says how
    many there are, and `allocations_next` is the id to pass as `after` for the next page (None: the last).
    """

    host_id: str
    resources: dict[ResourceType, ResourceStatus]
    disk_breakdown: DiskBreakdown
    gpu: dict[str, Any] | None
    allocations: list[AllocationBreakdown] = field(default_factory=list)
    allocations_total: int = 0
    allocations_next: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"host": self.host_id, "labels": dict(self.labels)}
        for resource in ResourceType:
            data[resource.value] = self.resources[resource].to_dict()
        data["disk_breakdown"] = self.disk_breakdown.to_dict()
        if self.gpu is not None:
            data["gpu"] = self.gpu
        data["allocations"] = [a.to_dict() for a in self.allocations]
        data["allocations_total"] = self.allocations_total
        data["allocations_next"] = self.allocations_next
        return data


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a record did: `applied`, `stale` (an older version), or `duplicate` (event seen)."""

    outcome: str
    entity_id: str
    version: int


@dataclass(frozen=True, slots=True)
class InstanceUtilizationInfo:
    """The seed's InstanceUtilizationInfo: what a usage sampler needs of a running instance, and what it
    was promised (memory is size + hotplug)."""

    id: str
    name: str
    hypervisor_pid: int | None
    tap_device: str
    allocated_vcpus: int
    allocated_memory_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "hypervisor_pid": self.hypervisor_pid,
            "tap_device": self.tap_device,
            "allocated_vcpus": self.allocated_vcpus,
            "allocated_memory_bytes": self.allocated_memory_bytes,
        }
