"""The one builder of reservation and allocation-history rows: parameter tuples in column order, ready for
the DBAPI cursor, used by every write that holds, ends a hold or moves a host's totals.

Times are passed in already bound (`Sql.bind_time`), so a group binds its creation time once; every other
value is written as it is (`check_unbound` holds the models to that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ledger.core.charges import Charge
from ledger.core.results import HELD
from ledger.store.totals import RESOURCE_PARTS

HOLD_COLUMNS: Final = (
    "reservation_id",
    "host_id",
    "idempotency_key",
    "status",
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "network_download_bps",
    "network_upload_bps",
    "network_bps",
    "disk_io_bps",
    "gpu",
    "gpu_profile",
    "defaulted",
    "created_at",
    "expires_at",
    "ended_at",
    "instance_id",
)
# What ending a hold needs of it, read back by the statement that ends it.
HOLD_AMOUNTS: Final = (
    "reservation_id",
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "network_bps",
    "disk_io_bps",
    "gpu",
)

LOG_COLUMNS: Final = (
    "host_id",
    "at",
    "entity_kind",
    "entity_id",
    "action",
    "bucket",
    "cause",
    "cpu",
    "memory_bytes",
    "disk_bytes",
    "network_bps",
    "disk_io_bps",
    "gpu",
)
# a `place` idempotency key and where it was held (unique across the fleet)
PLACEMENT_COLUMNS: Final = ("idempotency_key", "host_id", "reservation_id", "created_at")
MAX_CAUSE_LENGTH: Final = 255

Delta = Mapping[str, int]  # hosts-table total column → change
# each hosts-table total's history column (the position in RESOURCE_PARTS that adds it up)
_PART: Final = {column: index for index, columns in enumerate(RESOURCE_PARTS) for column in columns}


def hold_row(
    reservation_id: str, host_id: str, key: str | None, charge: Charge, created: Any, expires: Any
) -> tuple[Any, ...]:
    """A new held reservation, as HOLD_COLUMNS list it."""
    return (
        reservation_id,
        host_id,
        key,
        HELD,
        charge.vcpus,
        charge.memory_bytes,
        charge.disk_bytes,
        charge.network_download_bps,
        charge.network_upload_bps,
        charge.network_bps,
        charge.disk_io_bps,
        charge.gpu,
        charge.gpu_profile,
        ",".join(charge.defaulted),
        created,
        expires,
        None,
        None,
    )


def hold_delta(amounts: tuple[int, ...], sign: int = 1) -> dict[str, int]:
    """What holding (sign 1) or ending (sign -1) a hold does to its host's pending totals, from the
    amounts HOLD_AMOUNTS names after the id."""
    cpu, memory, disk, network, disk_io, gpu = amounts
    delta = {
        "pend_cpu": cpu,
        "pend_memory": memory,
        "pend_disk": disk,
        "pend_network": network,
        "pend_disk_io": disk_io,
        "pend_gpu": gpu,
    }
    return {column: sign * amount for column, amount in delta.items() if amount}


def log_row(
    host_id: str, at: Any, kind: str, entity_id: str, action: str, cause: str, delta: Delta
) -> tuple[Any, ...]:
    """The allocation_log row for a change of `delta` to a host's totals (`at` bound), as LOG_COLUMNS list
    it: one amount per resource, adding up what moved in either bucket."""
    amounts = [0] * len(RESOURCE_PARTS)
    bucket = "allocated"
    for column, change in delta.items():  # one pass over what moved (a hold moves up to 6 of 15 totals)
        index = _PART.get(column)
        if index is not None:
            amounts[index] += change
        if column.startswith("pend_"):
            bucket = "pending"
    cpu, memory, disk, network, disk_io, gpu = amounts
    return (
        host_id,
        at,
        kind,
        entity_id,
        action,
        bucket,
        cause[:MAX_CAUSE_LENGTH],
        cpu,
        memory,
        disk,
        network,
        disk_io,
        gpu,
    )
