"""Everything one host can offer, read in one pass: what `ledger discover` prints and the store keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.core.gpu import GPUStatus
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.discovery.cpu import cpu_capacity
from ledger.discovery.disk import disk_capacity
from ledger.discovery.gpu import detect_gpu
from ledger.discovery.memory import memory_capacity
from ledger.discovery.network import network_capacity
from ledger.discovery.sysfs import REAL_ROOT

# Disk I/O throughput cannot be read from the kernel reliably; the seed assumed 1 GB/s.
DEFAULT_DISK_IO = 1_000_000_000


@dataclass(frozen=True, slots=True)
class HostCapacities:
    """Raw capacity per resource with its source, plus the GPU status (None when there is no NVIDIA GPU)."""

    cpu: Capacity
    memory: Capacity
    disk: Capacity
    network: Capacity
    disk_io: Capacity
    gpu: GPUStatus | None

    def get(self, resource: ResourceType) -> Capacity:
        """The capacity of `resource`."""
        capacity: Capacity = getattr(self, resource.value)
        return capacity

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: {"cpu": {"capacity", "source"[, "hint"]}, ..., "gpu": GPUStatus.to_dict() or None}."""
        data: dict[str, Any] = {r.value: capacity_dict(self.get(r)) for r in ResourceType}
        data["gpu"] = self.gpu.to_dict() if self.gpu else None
        return data


def capacity_dict(capacity: Capacity) -> dict[str, Any]:
    data: dict[str, Any] = {"capacity": capacity.capacity, "source": capacity.source.value}
    if capacity.hint:
        data["hint"] = capacity.hint
    return data


def disk_io_capacity(limit: int | None) -> Capacity:
    """DISK_IO_LIMIT if set, else the documented default of 1 GB/s."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return Capacity(DEFAULT_DISK_IO, Source.DEFAULT)


def discover(settings: Settings, root: Path = REAL_ROOT) -> HostCapacities:
    """Read every resource under `root` (a host's `/` or a fixture tree); configured limits win."""
    return HostCapacities(
        cpu=cpu_capacity(settings.cpu_limit, root),
        memory=memory_capacity(settings.memory_limit, root),
        disk=disk_capacity(settings.disk_limit, settings.data_dir),
        network=network_capacity(settings.network_limit, root),
        disk_io=disk_io_capacity(settings.disk_io_limit),
        gpu=detect_gpu(root),
    )
