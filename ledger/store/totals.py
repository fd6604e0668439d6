"""The running totals a host row keeps (one column per resource and bucket), shared by the ledger and
group admission."""

from __future__ import annotations

from ledger.core.resources import ResourceType

ALLOC_COLUMNS = {
    ResourceType.CPU: ("alloc_cpu",),
    ResourceType.MEMORY: ("alloc_memory",),
    ResourceType.NETWORK: ("alloc_network",),
    ResourceType.DISK_IO: ("alloc_disk_io",),
    ResourceType.DISK: ("images_bytes", "oci_cache_bytes", "volumes_bytes", "overlays_bytes"),
}
PEND_COLUMN = {r: f"pend_{r.value}" for r in ResourceType}  # what held reservations take
TOTAL_COLUMNS = (
    "alloc_cpu",
    "alloc_memory",
    "alloc_network",
    "alloc_disk_io",
    "alloc_gpu",
    "images_bytes",
    "oci_cache_bytes",
    "volumes_bytes",
    "overlays_bytes",
    *(PEND_COLUMN[r] for r in ResourceType),
    "pend_gpu",
)
