"""Resource types, capacity sources and instance states: the vocabulary every layer shares."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ResourceType(enum.StrEnum):
    """A host resource that can be allocated; values are the seed's JSON names."""

    CPU = "cpu"
    MEMORY = "memory"
    DISK = "disk"
    NETWORK = "network"
    DISK_IO = "disk_io"


# Every resource in one fixed order: per-resource tuples (running totals, charges) are laid out this way.
RESOURCES: tuple[ResourceType, ...] = tuple(ResourceType)

# The order in which validate checks resources and reports the first that does not fit (the seed's order,
# with disk bytes last because the seed did not check them at all).
ADMISSION_ORDER: tuple[ResourceType, ...] = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
    ResourceType.DISK,
)


class Source(enum.StrEnum):
    """How a capacity was determined."""

    DETECTED = "detected"
    CONFIGURED = "configured"
    # A documented built-in value (disk I/O has no reliable detector; the seed assumes 1 GB/s).
    DEFAULT = "default"
    # Discovery could not read a value; the capacity is 0 and admission refuses until it is configured.
    UNDETECTED = "undetected"


DEFAULT_RATIOS: dict[ResourceType, float] = {
    ResourceType.CPU: 4.0,
    ResourceType.MEMORY: 1.0,
    ResourceType.DISK: 1.0,
    ResourceType.NETWORK: 2.0,
    ResourceType.DISK_IO: 2.0,
}

# States whose instances hold resources. Only the seed's known resting states release them; `Unknown`, and any
# state this version has not heard of, count as active (unlike the seed, which ignored `Unknown`): an instance
# whose state the orchestrator lost track of may still be running, and forgetting it would over-promise.
ACTIVE_STATES: frozenset[str] = frozenset({"Created", "Running", "Paused", "Unknown"})
INACTIVE_STATES: frozenset[str] = frozenset({"Stopped", "Standby", "Shutdown"})
RUNNING = "Running"  # the state whose instances a usage sampler measures (the seed's InstanceUtilizationInfo)
DELETED_STATE = "Deleted"  # what a deleted instance's tombstone (or a delete event without a state) says


def is_active(state: str) -> bool:
    """Whether an instance in `state` holds its resources."""
    return state not in INACTIVE_STATES


# A host id is a NATS subject token (ledger.events.<host>.…): these characters cannot appear in it.
HOST_ID_FORBIDDEN = r"[.*>\s]"


def parse_resource(name: str) -> ResourceType:
    """The resource type called `name`, or ValueError listing the valid names."""
    try:
        return ResourceType(name)
    except ValueError:
        valid = ", ".join(r.value for r in ResourceType)
        raise ValueError(f"unknown resource type {name!r}: expected one of {valid}") from None


@dataclass(frozen=True, slots=True)
class Capacity:
    """One resource's raw capacity on a host and how it was found."""

    capacity: int
    source: Source
    hint: str | None = None  # for `undetected`: the setting that fixes it
