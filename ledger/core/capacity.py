"""The capacity formula and the admission rules, written once and used by every door."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.core.resources import ADMISSION_ORDER, DEFAULT_RATIOS, ResourceType, Source
from ledger.core.units import MAX_AMOUNT, format_bandwidth, format_byte_rate, format_bytes

GIB = 2**30
MIN_DISK_FOR_PULL = 5 * GIB  # an image pull needs this much disk available (the seed's threshold)


def oversub_ratio(resource: ResourceType, ratio: float | None) -> float:
    """The ratio in force: a missing, non-positive or non-finite ratio falls back to the default."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:  # nan or inf would break effective_limit
        return DEFAULT_RATIOS[resource]
    return ratio


def effective_limit(capacity: int, ratio: float) -> int:
    """How much of a resource may be promised: `int(capacity × ratio)`, at most what a BIGINT holds."""
    return min(int(capacity * ratio), MAX_AMOUNT)


def available(limit: int, allocated: int, pending: int = 0) -> int:
    """What is left to promise; never negative, even when a host is already over-committed."""
    return max(0, limit - allocated - pending)


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    """One resource on one host: the seed's ResourceStatus plus `pending` (held reservations)."""

    type: ResourceType
    capacity: int
    effective_limit: int
    allocated: int
    pending: int
    available: int
    oversub_ratio: float
    source: Source
    hint: str | None = None  # for `undetected`: the setting that fixes it (from discovery)

    @classmethod
    def compute(
        cls,
        resource: ResourceType,
        capacity: int,
        ratio: float | None,
        source: Source,
        allocated: int,
        pending: int,
    ) -> ResourceStatus:
        """Apply the one capacity formula."""
        in_force = oversub_ratio(resource, ratio)
        limit = effective_limit(capacity, in_force)
        return cls(
            type=resource,
            capacity=capacity,
            effective_limit=limit,
            allocated=allocated,
            pending=pending,
            available=available(limit, allocated, pending),
            oversub_ratio=in_force,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = self.type.value
        data["source"] = self.source.value
        if self.hint is None:
            del data["hint"]  # only an undetected capacity has one
        return data


# More vCPUs than any host has: a larger request is a mistake, not a placement question.
MAX_VCPUS = 1_000_000


def check_amount(name: str, value: object, *, label: str | None = None) -> int:
    """A whole, non-negative amount within what the schema holds, or InvalidRequest naming the field."""
    label = label or name
    maximum = MAX_VCPUS if name == "vcpus" else MAX_AMOUNT
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{label} must be a whole number, got {value!r}", field=name)
    if value < 0:
        raise InvalidRequest(f"{label} cannot be negative, got {value}", field=name)
    if value > maximum:
        raise InvalidRequest(f"{label} is too large: {value} exceeds {maximum}", field=name)
    return value


@dataclass(frozen=True, slots=True)
class AllocationRequest:
    """What one instance asks of a host (the seed's ValidateAllocation parameters, plus disk bytes)."""

    vcpus: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    network_download_bps: int = 0
    network_upload_bps: int = 0
    disk_io_bps: int = 0
    needs_gpu: bool = False
    gpu_profile: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "vcpus",
            "memory_bytes",
            "disk_bytes",
            "network_download_bps",
            "network_upload_bps",
            "disk_io_bps",
        ):
            check_amount(name, getattr(self, name))
        if not isinstance(self.needs_gpu, bool):
            raise InvalidRequest(
                f"needs_gpu must be true or false, got {self.needs_gpu!r}", field="needs_gpu"
            )
        if self.gpu_profile is not None and not isinstance(self.gpu_profile, str):
            raise InvalidRequest("gpu_profile must be a string", field="gpu_profile")

    @property
    def wants_gpu(self) -> bool:
        return self.needs_gpu or bool(self.gpu_profile)

    @property
    def network_bps(self) -> int:
        """What the request takes of the uplink: max(down, up), since the link is shared."""
        return max(self.network_download_bps, self.network_upload_bps)

    def demands(self) -> tuple[int, int, int, int, int]:
        """`demand` of every resource at once, in ResourceType's order (one call for hot paths)."""
        return self.vcpus, self.memory_bytes, self.disk_bytes, self.network_bps, self.disk_io_bps

    def demand(self, resource: ResourceType) -> int:
        """How much of `resource` this request takes."""
        match resource:
            case ResourceType.CPU:
                return self.vcpus
            case ResourceType.MEMORY:
                return self.memory_bytes
            case ResourceType.DISK:
                return self.disk_bytes
            case ResourceType.NETWORK:
                return self.network_bps
            case ResourceType.DISK_IO:
                return self.disk_io_bps


_NAMES = {
    ResourceType.CPU: "CPU",
    ResourceType.MEMORY: "memory",
    ResourceType.DISK: "disk",
    ResourceType.NETWORK: "network bandwidth",
    ResourceType.DISK_IO: "disk I/O bandwidth",
}


def format_amount(resource: ResourceType, amount: int) -> str:
    """An amount of `resource` the way a person reads it in a message."""
    match resource:
        case ResourceType.CPU:
            return f"{amount} vCPUs"
        case ResourceType.MEMORY | ResourceType.DISK:
            return format_bytes(amount)
        case ResourceType.NETWORK:
            return format_bandwidth(amount)
        case ResourceType.DISK_IO:
            return format_byte_rate(amount)


def _bare(resource: ResourceType, amount: int) -> str:
    return str(amount) if resource is ResourceType.CPU else format_amount(resource, amount)


def insufficient(resource: ResourceType, requested: int, status: ResourceStatus) -> InsufficientResources:
    """The seed-style refusal for `resource`, with the numbers as structured fields."""
    message = (
        f"insufficient {_NAMES[resource]}: requested {format_amount(resource, requested)}, "
        f"but only {_bare(resource, status.available)} available "
        f"(currently allocated: {_bare(resource, status.allocated)}"
        + (f", pending reservations: {_bare(resource, status.pending)}" if status.pending else "")
        + f", effective limit: {_bare(resource, status.effective_limit)} "
        f"with {status.oversub_ratio:.1f}x oversubscription)"
    )
    return InsufficientResources(
        message,
        resource=resource.value,
        requested=requested,
        available=status.available,
        allocated=status.allocated,
        pending=status.pending,
        effective_limit=status.effective_limit,
        ratio=status.oversub_ratio,
    )


def first_shortfall(
    request: AllocationRequest, statuses: Mapping[ResourceType, ResourceStatus]
) -> InsufficientResources | None:
    """The refusal for the first resource (in the seed's order) that does not fit, or None if all fit."""
    for resource in ADMISSION_ORDER:
        wanted = request.demand(resource)
        if wanted == 0:
            continue
        status = statuses[resource]
        if wanted > status.available:
            return insufficient(resource, wanted, status)
    return None


@dataclass(frozen=True, slots=True)
class GpuSlots:
    """How many GPU slots a host has and how many are taken (by instances or held reservations)."""

    mode: str
    total: int
    used: int
    profiles: Mapping[str, int] = field(default_factory=dict)  # vGPU: profile name → instances available

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


def gpu_shortfall(request: AllocationRequest, slots: GpuSlots | None) -> InsufficientResources | None:
    """The refusal when a GPU is wanted and none is free; None otherwise."""
    if not request.wants_gpu:
        return None
    if slots is None or slots.total == 0:
        return InsufficientResources(
            "insufficient GPU: this host has no GPU", resource="gpu", requested=1, available=0
        )
    if slots.free < 1:
        return InsufficientResources(
            f"insufficient GPU: all {slots.total} GPU slots are in use ({slots.mode} mode)",
            resource="gpu",
            requested=1,
            available=0,
            allocated=slots.used,
            effective_limit=slots.total,
        )
    return None


def proportional_share(vcpus: int, cpu_capacity: int, capacity: int, ratio: float = 1.0) -> int:
    """`vcpus ÷ cpu_capacity` of `capacity` (times `ratio` when the operator asks for the seed's old rule)."""
    if cpu_capacity <= 0 or vcpus <= 0:
        return 0
    return int(vcpus * capacity * ratio) // cpu_capacity


def check_disk_for_pull(disk_available: int) -> None:
    """An image pull needs at least 5 GiB of disk left to promise (the seed's HasSufficientDiskForPull)."""
    if disk_available < MIN_DISK_FOR_PULL:
        raise InsufficientResources(
            f"insufficient disk space for image pull: {format_bytes(disk_available)} available, "
            f"need at least {format_bytes(MIN_DISK_FOR_PULL)}",
            resource="disk",
            requested=MIN_DISK_FOR_PULL,
            available=disk_available,
        )


def max_image_storage_bytes(disk_capacity: int, fraction: float) -> int:
    """Images plus OCI cache may use at most `fraction` of the disk's capacity."""
    return int(disk_capacity * fraction)


def check_image_storage(current: int, maximum: int) -> None:
    """Refuse another pull once image storage has reached its cap (the seed's HasSufficientImageStorage)."""
    if current >= maximum:
        raise InsufficientResources(
            f"image storage limit exceeded: {format_bytes(current)} used, limit {format_bytes(maximum)}",
            resource="disk",
            allocated=current,
            effective_limit=maximum,
        )
