"""The capacity formula, amounts and how refusals word them: written once and used by every door."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.core.resources import DEFAULT_RATIOS, ResourceType, Source
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
    used: float | None = None  # what the VMs really use: the newest usage reports summed (none: unsampled)

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
        if self.used is None:
            del data["used"]  # only a sampled resource has one
        return data


# More vCPUs than any host has: a larger request is a mistake, not a placement question.
MAX_VCPUS = 1_000_000


def describe_value(value: object, limit: int = 40) -> str:
    """`value` as a message may quote it: its repr, cut short (a 400-digit number is no help to anyone)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_amount(name: str, value: object, *, label: str | None = None) -> int:
    """A whole, non-negative amount within what the schema holds, or InvalidRequest naming the field."""
    label = label or name
    maximum = MAX_VCPUS if name == "vcpus" else MAX_AMOUNT
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{label} must be a whole number, got {describe_value(value)}", field=name)
    if value < 0:
        raise InvalidRequest(f"{label} cannot be negative, got {value}", field=name)
    if value > maximum:
        raise InvalidRequest(f"{label} is too large: {describe_value(value)} exceeds {maximum}", field=name)
    return value


def link_share(download_bps: int, upload_bps: int) -> int:
    """What an instance takes of the uplink: the larger direction, since both share the link."""
    return download_bps if download_bps >= upload_bps else upload_bps


_NAMES = {
    ResourceType.CPU: "CPU",
    ResourceType.MEMORY: "memory",
    ResourceType.DISK: "disk",
    ResourceType.NETWORK: "network bandwidth",
    ResourceType.DISK_IO: "disk I/O",
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


def proportional_share(vcpus: int, cpu_capacity: int, capacity: int, ratio: float = 1.0) -> int:
    """`vcpus ÷ cpu_capacity` of `capacity` (times `ratio` when the operator asks for the seed's old rule),
    rounded down to whole bytes and at most what a BIGINT holds."""
    if cpu_capacity <= 0 or vcpus <= 0:
        return 0
    scaled = vcpus * capacity if ratio == 1.0 else int(vcpus * capacity * ratio)  # exact when it can be
    return min(scaled // cpu_capacity, MAX_AMOUNT)


def check_disk_for_pull(disk_available: int) -> None:
    """An image pull needs at least 5 GiB of disk left to promise (the seed's HasSufficientDiskForPull)."""
    if disk_available < MIN_DISK_FOR_PULL:
        raise InsufficientResources(
            f"insufficient disk space for image pull: {disk_available} bytes available, "
            f"minimum {MIN_DISK_FOR_PULL} bytes required",
            resource="disk",
            requested=MIN_DISK_FOR_PULL,
            available=disk_available,
        )


def max_image_storage_bytes(disk_capacity: int, fraction: float) -> int:
    """Images plus OCI cache may use at most `fraction` of the disk's capacity."""
    return int(disk_capacity * fraction)


def check_image_storage(current: int, maximum: int, fraction: float) -> None:
    """Refuse another pull once image storage (images plus OCI cache) has reached its cap, `fraction` of the
    disk's capacity (the seed's HasSufficientImageStorage)."""
    if current >= maximum:
        raise InsufficientResources(
            f"image storage limit exceeded: {current} bytes used, limit is {maximum} bytes "
            f"({fraction * 100:.0f}% of disk)",
            resource="disk",
            allocated=current,
            effective_limit=maximum,
        )
