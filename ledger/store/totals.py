"""The running totals a host row keeps (one column per resource and bucket), and what each entity adds.

`allocated` is what active instances, volumes, images and the OCI cache hold; `pending` what held
reservations hold. The `ledger_drift` view recomputes every column from the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

from ledger.core.capacity import available
from ledger.core.placement import room
from ledger.core.resources import RESOURCES, ResourceType

ALLOC_COLUMNS: Final = {
    ResourceType.CPU: ("alloc_cpu",),
    ResourceType.MEMORY: ("alloc_memory",),
    ResourceType.NETWORK: ("alloc_network",),
    ResourceType.DISK_IO: ("alloc_disk_io",),
    ResourceType.DISK: ("images_bytes", "oci_cache_bytes", "volumes_bytes", "overlays_bytes"),
}
PEND_COLUMN: Final = {r: f"pend_{r.value}" for r in ResourceType}  # what held reservations take
TOTAL_COLUMNS: Final = (
    "alloc_cpu",
    "alloc_memory",
    "alloc_network",
    "alloc_disk_io",
    "alloc_gpu",
    "images_bytes",
    "oci_cache_bytes",
    "volumes_bytes",
    "overlays_bytes",
    *(PEND_COLUMN[r] for r in RESOURCES),
    "pend_gpu",
)
# kept on the host row for fleet searches: each resource's effective limit, and what is left of it
LIMIT_COLUMNS: Final = tuple(f"limit_{r.value}" for r in RESOURCES)
AVAIL_COLUMNS: Final = tuple(f"avail_{r.value}" for r in RESOURCES)
# written with the totals, from them and the limits: what is left of each limit, and the host's room
DERIVED_COLUMNS: Final = (*AVAIL_COLUMNS, "room")
ROOM_SLACK: Final = 1 / 256  # how far the stored room may lag a fall in the true room (see `derived`)
# per history column (cpu, memory, disk, network, disk I/O, GPU): the totals it adds up, in both buckets
RESOURCE_PARTS: Final = (
    ("alloc_cpu", "pend_cpu"),
    ("alloc_memory", "pend_memory"),
    (*ALLOC_COLUMNS[ResourceType.DISK], "pend_disk"),
    ("alloc_network", "pend_network"),
    ("alloc_disk_io", "pend_disk_io"),
    ("alloc_gpu", "pend_gpu"),
)

# The same per resource, in RESOURCES order, looked up once: admission reads them for every request (and an
# enum-keyed lookup hashes in Python).
_ALLOC_PARTS: Final = tuple(ALLOC_COLUMNS[r] for r in RESOURCES)
_PEND_COLUMNS: Final = tuple(PEND_COLUMN[r] for r in RESOURCES)
_pending_of: Final = itemgetter(*_PEND_COLUMNS)

Totals = dict[str, int]
RowLike = Mapping[Any, Any]  # a row by column name (a dict or SQLAlchemy's RowMapping)


def allocated(totals: Mapping[str, int]) -> tuple[int, ...]:
    """What active entities hold of each resource, in RESOURCES order."""
    return tuple(
        [totals[parts[0]] if len(parts) == 1 else sum([totals[c] for c in parts]) for parts in _ALLOC_PARTS]
    )


def pending(totals: Mapping[str, int]) -> tuple[int, ...]:
    """What held reservations hold of each resource, in RESOURCES order."""
    found: tuple[int, ...] = _pending_of(totals)
    return found


def left(totals: Mapping[str, int], limits: Sequence[int]) -> tuple[int, ...]:
    """What is available of each resource (RESOURCES order): the one formula, core.capacity.available."""
    return tuple(map(available, limits, allocated(totals), pending(totals)))


def derived(
    totals: Mapping[str, int], limits: Sequence[int], stored_room: float | None = None
) -> tuple[Any, ...]:
    """The DERIVED_COLUMNS' values: `left` per resource, then `core.placement.room` of it — or the room
    already stored, while that is above the true room by less than ROOM_SLACK. Placement only needs the
    stored room never to under-state (store/fleet.py walks down it as an upper bound), and a room that
    does not change leaves its index alone: PostgreSQL then rewrites a host row in place (a HOT update)
    for most admissions instead of adding index entries for the host on every one."""
    free = left(totals, limits)
    exact = room(limits, free)
    if stored_room is not None and exact <= stored_room < exact + ROOM_SLACK:
        return (*free, stored_room)
    return (*free, exact)


def pending_delta(before: Sequence[int], after: Sequence[int], gpu: int) -> Totals:
    """The change from `before` to `after` pending amounts (RESOURCES order), plus `gpu` slots."""
    delta = {column: new - old for column, old, new in zip(_PEND_COLUMNS, before, after, strict=True)}
    delta["pend_gpu"] = gpu
    return {column: change for column, change in delta.items() if change}


def instance_usage(row: RowLike | None) -> Totals:
    """What an instance row adds to its host's allocated totals (nothing unless active and not deleted)."""
    if row is None or not row["active"] or row["deleted"]:
        return {}
    return {
        "alloc_cpu": row["vcpus"],
        "alloc_memory": row["memory_bytes"],
        "alloc_network": row["network_bps"],
        "alloc_disk_io": row["disk_io_bps"],
        "alloc_gpu": row["gpu_slots"],
        "overlays_bytes": row["overlay_bytes"] + row["volume_overlay_bytes"],
    }


def sized_usage(column: str, size: str = "size_bytes") -> Any:
    """What a volume or image row (or the OCI cache's, with `size` total_bytes) adds to `column`."""

    def usage(row: RowLike | None) -> Totals:
        if row is None or row.get("deleted"):
            return {}
        return {column: row[size]}

    return usage


def difference(new: Mapping[str, int], old: Mapping[str, int]) -> Totals:
    keys = set(new) | set(old)
    return {k: new.get(k, 0) - old.get(k, 0) for k in keys if new.get(k, 0) != old.get(k, 0)}
