"""What admission reads of a host: its limits, running totals and GPU slots, as plain data.

Per-resource tuples are laid out in RESOURCES order; the positions below name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ledger.core.capacity import ResourceStatus, available
from ledger.core.resources import ADMISSION_ORDER, RESOURCES, ResourceType, Source

# Positions in RESOURCES (ResourceType's order): every per-resource tuple below is laid out this way.
_R = ResourceType
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    RESOURCES.index(r) for r in (_R.CPU, _R.MEMORY, _R.DISK, _R.NETWORK, _R.DISK_IO)
)
# ADMISSION_ORDER as positions (GPU slots are checked after all of them).
CHECK_ORDER: Final = tuple(RESOURCES.index(r) for r in ADMISSION_ORDER)


@dataclass(frozen=True, slots=True)
class ResourceLimit:
    """One resource's capacity on a host, how it was found, and the ratio and effective limit in force."""

    capacity: int
    effective_limit: int
    ratio: float
    source: Source
    hint: str | None = None  # for `undetected`: the setting that fixes it


@dataclass(frozen=True, slots=True)
class GpuSlots:
    """A host's GPU slots: VFs in vGPU mode, physical GPUs in passthrough mode."""

    mode: str
    total: int
    used: int  # by instances (or seen in use by discovery)
    pending: int = 0  # held by reservations
    profiles: Mapping[str, int] = field(default_factory=dict)  # vGPU: profile name → instances available

    @property
    def free(self) -> int:
        return max(0, self.total - self.used - self.pending)


@dataclass(frozen=True, slots=True)
class HostState:
    """What admission reads of a host: per resource (in RESOURCES order) its limit, what active entities
    hold (`allocated`) and what held reservations hold (`pending`); and its GPU slots (None: no GPU)."""

    host_id: str
    limits: tuple[ResourceLimit, ...]
    allocated: tuple[int, ...]
    pending: tuple[int, ...]
    gpu: GpuSlots | None = None

    def status(self, resource: ResourceType) -> ResourceStatus:
        """The seed's ResourceStatus (plus pending) of one resource: the one definition of `available`."""
        index = RESOURCES.index(resource)
        return self._status(index, self.allocated[index], self.pending[index])

    def statuses(self) -> dict[ResourceType, ResourceStatus]:
        return {r: self.status(r) for r in RESOURCES}

    def _status(self, index: int, allocated: int, pending: int) -> ResourceStatus:
        limit = self.limits[index]
        return ResourceStatus(
            type=RESOURCES[index],
            capacity=limit.capacity,
            effective_limit=limit.effective_limit,
            allocated=allocated,
            pending=pending,
            available=available(limit.effective_limit, allocated, pending),
            oversub_ratio=limit.ratio,
            source=limit.source,
            hint=limit.hint if limit.source is Source.UNDETECTED else None,
        )
