"""The entity tables' rows: each kind's table, key and what its row adds to the host's totals, the row an
instance record is stored as (bandwidths as charged), tombstones, and the statements that read and write
many rows at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, tuple_, update

from ledger.core.capacity import link_share
from ledger.core.charges import DefaultBandwidth
from ledger.core.host import HostState
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import DELETED_STATE
from ledger.store.sql import images, instances, oci_cache, volumes
from ledger.store.totals import RowLike, Totals, instance_usage, sized_usage

Record = InstanceRecord | VolumeRecord | ImageRecord | OciCacheRecord
Usage = Callable[[RowLike | None], Totals]
BANDWIDTH_COLUMNS = ("network_download_bps", "network_upload_bps", "network_bps", "disk_io_bps")
_CHUNK = 500  # keys per SELECT … IN (…)


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of entity: its table, the column that identifies it on its host, and its usage."""

    name: str
    table: Table
    key: str
    usage: Usage


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("instance", instances, "instance_id", instance_usage),
        Kind("volume", volumes, "volume_id", sized_usage("volumes_bytes")),
        Kind("image", images, "image_id", sized_usage("images_bytes")),
        Kind("oci_cache", oci_cache, "host_id", sized_usage("oci_cache_bytes", "total_bytes")),
    )
}


def values(record: Record, host: HostState, defaults: DefaultBandwidth) -> dict[str, Any]:
    """The columns a record is stored as; an instance's unstated bandwidths as charged on `host`."""
    if isinstance(record, InstanceRecord):
        down, up, disk_io, defaulted = defaults.fill(
            host, record.vcpus, record.network_download_bps, record.network_upload_bps, record.disk_io_bps
        )
        return {
            "name": record.name or "",
            "state": record.state,
            "active": record.active,
            "vcpus": record.vcpus,
            "memory_bytes": record.memory_bytes,
            "overlay_bytes": record.overlay_bytes,
            "volume_overlay_bytes": record.volume_overlay_bytes,
            "volume_bytes": record.volume_bytes,
            "network_download_bps": down,
            "network_upload_bps": up,
            "network_bps": link_share(down, up),
            "disk_io_bps": disk_io,
            "gpu": record.gpu,
            "gpu_slots": record.gpu_slots,
            "reservation_id": record.reservation_id,
            "defaulted": ",".join(defaulted),
            "hypervisor_pid": record.hypervisor_pid,
            "tap_device": record.tap_device,
        }
    if isinstance(record, VolumeRecord):
        return {"name": record.name or "", "size_bytes": record.size_bytes, "attached_to": record.attached_to}
    if isinstance(record, ImageRecord):
        return {"name": record.name or "", "size_bytes": record.size_bytes}
    return {"total_bytes": record.total_bytes}


def recharged(row: Mapping[str, Any], host: HostState, defaults: DefaultBandwidth) -> dict[str, Any]:
    """An instance row with the bandwidths it left unstated charged the default on `host` as it is now."""
    names = set(row["defaulted"].split(","))
    down, up, disk_io, _ = defaults.fill(
        host,
        row["vcpus"],
        None if "network_download_bps" in names else row["network_download_bps"],
        None if "network_upload_bps" in names else row["network_upload_bps"],
        None if "disk_io_bps" in names else row["disk_io_bps"],
    )
    return {
        **row,
        "network_download_bps": down,
        "network_upload_bps": up,
        "network_bps": link_share(down, up),
        "disk_io_bps": disk_io,
    }


class Statements:
    """One kind's statements, built once: read many rows, insert and update full records, tombstones."""

    def __init__(self, kind: Kind) -> None:
        table, key = kind.table, kind.key
        self.kind = kind
        self.columns = [c.name for c in table.c]
        self.ids = [table.c.host_id] if key == "host_id" else [table.c.host_id, table.c[key]]
        self.insert = insert(table)
        self.settable = [c for c in self.columns if c not in {"host_id", key}]
        self.update = (
            update(table)
            .where(table.c.host_id == bindparam("b_host"), table.c[key] == bindparam("b_key"))
            .values({c: bindparam(f"v_{c}") for c in self.settable})
        )

    def identity(self, host_id: str, entity_id: str) -> tuple[str, ...]:
        return (host_id,) if self.kind.key == "host_id" else (host_id, entity_id)

    def load(self, conn: Connection, ids: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], dict[str, Any]]:
        """The stored rows of `ids` (host id, and entity id unless the host is the key), by id."""
        found: dict[tuple[str, ...], dict[str, Any]] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            query = select(self.kind.table).where(
                tuple_(*self.ids).in_(chunk) if len(self.ids) > 1 else self.ids[0].in_([i[0] for i in chunk])
            )
            for row in conn.execute(query).mappings():
                found[tuple(row[c.name] for c in self.ids)] = dict(row)
        return found

    def full_record(
        self, values: Mapping[str, Any], host_id: str, entity_id: str, version: int, now: datetime
    ) -> dict[str, Any]:
        record = {"host_id": host_id, self.kind.key: entity_id, "version": version, "updated_at": now}
        record.update({k: v for k, v in values.items() if k in self.columns and k not in record})
        return record

    def write(self, conn: Connection, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]) -> None:
        if inserts:
            conn.execute(self.insert, inserts)
        if updates:
            key = self.kind.key
            conn.execute(
                self.update,
                [
                    {"b_host": r["host_id"], "b_key": r[key], **{f"v_{c}": r[c] for c in self.settable}}
                    for r in updates
                ],
            )

    def tombstone(self) -> dict[str, Any]:
        """Every column zeroed or emptied, whatever the entity held before (order must not matter)."""
        emptied: dict[str, Any] = {}
        for column in self.kind.table.c:
            if column.name in {"host_id", self.kind.key, "version", "updated_at"}:
                continue
            python_type = column.type.python_type
            if python_type is int:
                emptied[column.name] = 0
            elif python_type is bool:
                emptied[column.name] = column.name == "deleted"
            elif column.name == "state":
                emptied[column.name] = DELETED_STATE
            elif column.nullable:
                emptied[column.name] = None
            else:  # a name, the defaulted bandwidths: empty
                emptied[column.name] = ""
        return emptied
