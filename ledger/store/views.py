"""Reporting views, created by the migrations; documented column by column in docs/sql.md.

They recompute everything from the rows (not from the hosts' running totals), so an analyst's report is the
audit of the admission path; `ledger_drift` shows any difference between the two and must read zero.
Each version is frozen once a migration uses it: change a view by adding a new version and a migration.
"""

from __future__ import annotations

from ledger.core.usage import RESOURCE_MEASURES

_NOW = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "postgresql": "(now() AT TIME ZONE 'UTC')",
}

_USAGE_V1 = """
WITH inst AS (
    SELECT host_id,
           CAST(SUM(vcpus) AS BIGINT) AS cpu,
           CAST(SUM(memory_bytes) AS BIGINT) AS memory,
           CAST(SUM(CASE WHEN network_download_bps > network_upload_bps
                    THEN network_download_bps ELSE network_upload_bps END) AS BIGINT) AS network,
           CAST(SUM(disk_io_bps) AS BIGINT) AS disk_io,
           CAST(SUM(overlay_bytes + volume_overlay_bytes) AS BIGINT) AS overlays,
           CAST(SUM(CASE WHEN gpu IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS gpu
    FROM instances WHERE active AND NOT deleted GROUP BY host_id
), vol AS (
    SELECT host_id, CAST(SUM(size_bytes) AS BIGINT) AS bytes FROM volumes WHERE NOT deleted GROUP BY host_id
), img AS (
    SELECT host_id, CAST(SUM(size_bytes) AS BIGINT) AS bytes FROM images WHERE NOT deleted GROUP BY host_id
), held AS (
    SELECT host_id,
           CAST(SUM(vcpus) AS BIGINT) AS cpu,
           CAST(SUM(memory_bytes) AS BIGINT) AS memory,
           CAST(SUM(disk_bytes) AS BIGINT) AS disk,
           CAST(SUM(CASE WHEN network_download_bps > network_upload_bps
                    THEN network_download_bps ELSE network_upload_bps END) AS BIGINT) AS network,
           CAST(SUM(disk_io_bps) AS BIGINT) AS disk_io, CAST(SUM(gpu) AS BIGINT) AS gpu
    FROM reservations WHERE status = 'held' AND {held_filter} GROUP BY host_id
)
SELECT h.host_id,
       COALESCE(inst.cpu, 0) AS cpu,
       COALESCE(inst.memory, 0) AS memory,
       COALESCE(inst.network, 0) AS network,
       COALESCE(inst.disk_io, 0) AS disk_io,
       COALESCE(inst.gpu, 0) AS gpu,
       COALESCE(img.bytes, 0) AS images_bytes,
       COALESCE(oci.total_bytes, 0) AS oci_cache_bytes,
       COALESCE(vol.bytes, 0) AS volumes_bytes,
       COALESCE(inst.overlays, 0) AS overlays_bytes,
       COALESCE(img.bytes, 0) + COALESCE(oci.total_bytes, 0) + COALESCE(vol.bytes, 0)
           + COALESCE(inst.overlays, 0) AS disk,
       COALESCE(held.cpu, 0) AS pend_cpu,
       COALESCE(held.memory, 0) AS pend_memory,
       COALESCE(held.disk, 0) AS pend_disk,
       COALESCE(held.network, 0) AS pend_network,
       COALESCE(held.disk_io, 0) AS pend_disk_io,
       COALESCE(held.gpu, 0) AS pend_gpu
FROM hosts h
LEFT JOIN inst ON inst.host_id = h.host_id
LEFT JOIN vol ON vol.host_id = h.host_id
LEFT JOIN img ON img.host_id = h.host_id
LEFT JOIN oci_cache oci ON oci.host_id = h.host_id
LEFT JOIN held ON held.host_id = h.host_id
"""

_PER_RESOURCE = """CASE c.resource WHEN 'cpu' THEN u.{p}cpu WHEN 'memory' THEN u.{p}memory
           WHEN 'disk' THEN u.{p}disk WHEN 'network' THEN u.{p}network WHEN 'disk_io' THEN u.{p}disk_io END"""

_RESOURCE_STATUS_V1 = """
SELECT c.host_id, c.resource, c.capacity, c.effective_limit, s.allocated, s.pending,
       CASE WHEN c.effective_limit - s.allocated - s.pending > 0
            THEN c.effective_limit - s.allocated - s.pending ELSE 0 END AS available,
       c.oversub_ratio, c.source
FROM capacities c
JOIN (
    SELECT c.host_id, c.resource, {allocated} AS allocated, {pending} AS pending
    FROM capacities c JOIN ledger_usage u ON u.host_id = c.host_id
) s ON s.host_id = c.host_id AND s.resource = c.resource
"""

_INSTANCE_ALLOCATIONS_V1 = """
SELECT host_id, instance_id, name AS instance_name, state, vcpus AS cpu, memory_bytes,
       overlay_bytes + volume_overlay_bytes + volume_bytes AS disk_bytes,
       network_download_bps, network_upload_bps, disk_io_bps, gpu, version
FROM instances WHERE active AND NOT deleted
"""

_DISK_BREAKDOWN_V1 = """
SELECT host_id, images_bytes, oci_cache_bytes, volumes_bytes, overlays_bytes, disk AS total_bytes
FROM ledger_usage
"""

_ALLOCATION_HISTORY_V1 = """
SELECT id, host_id, at, entity_kind, entity_id, action, bucket, cause,
       cpu, memory_bytes, disk_bytes, network_bps, disk_io_bps, gpu
FROM allocation_log
"""

_DRIFT_COLUMNS = (
    ("cpu", "alloc_cpu", "cpu"),
    ("memory", "alloc_memory", "memory"),
    ("network", "alloc_network", "network"),
    ("disk_io", "alloc_disk_io", "disk_io"),
    ("gpu", "alloc_gpu", "gpu"),
    ("images_bytes", "images_bytes", "images_bytes"),
    ("oci_cache_bytes", "oci_cache_bytes", "oci_cache_bytes"),
    ("volumes_bytes", "volumes_bytes", "volumes_bytes"),
    ("overlays_bytes", "overlays_bytes", "overlays_bytes"),
    ("pending_cpu", "pend_cpu", "pend_cpu"),
    ("pending_memory", "pend_memory", "pend_memory"),
    ("pending_disk", "pend_disk", "pend_disk"),
    ("pending_network", "pend_network", "pend_network"),
    ("pending_disk_io", "pend_disk_io", "pend_disk_io"),
    ("pending_gpu", "pend_gpu", "pend_gpu"),
)


def _drift_v1() -> str:
    parts = [
        f"SELECT h.host_id, '{name}' AS total, h.{stored} AS stored, a.{audited} AS recomputed, "
        f"h.{stored} - a.{audited} AS drift FROM hosts h JOIN ledger_audit a ON a.host_id = h.host_id"
        for name, stored, audited in _DRIFT_COLUMNS
    ]
    return "\nUNION ALL\n".join(parts)


def views_v1(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT) in creation order for schema version 1."""
    now = _NOW[dialect]
    per_resource_alloc = _PER_RESOURCE.format(p="")
    per_resource_pend = _PER_RESOURCE.format(p="pend_")
    return [
        # What counts now: held reservations that have not expired.
        ("ledger_usage", _USAGE_V1.format(held_filter=f"expires_at > {now}")),
        # What the running totals should hold: every held reservation, expired or not, until it is swept.
        ("ledger_audit", _USAGE_V1.format(held_filter="1 = 1")),
        (
            "resource_status",
            _RESOURCE_STATUS_V1.format(allocated=per_resource_alloc, pending=per_resource_pend),
        ),
        ("instance_allocations", _INSTANCE_ALLOCATIONS_V1),
        ("disk_breakdown", _DISK_BREAKDOWN_V1),
        ("allocation_history", _ALLOCATION_HISTORY_V1),
        ("ledger_drift", _drift_v1()),
    ]


# ---- version 2: charges computed once, in core, and stored with each row -----------------------------
# Instances and reservations store what they take of the uplink (`network_bps`, core's link_share) and an
# instance the GPU slots it holds (`gpu_slots`): the views add those up instead of restating the rules.

_USAGE_V2 = """
WITH inst AS (
    SELECT host_id,
           CAST(SUM(vcpus) AS BIGINT) AS cpu,
           CAST(SUM(memory_bytes) AS BIGINT) AS memory,
           CAST(SUM(network_bps) AS BIGINT) AS network,
           CAST(SUM(disk_io_bps) AS BIGINT) AS disk_io,
           CAST(SUM(overlay_bytes + volume_overlay_bytes) AS BIGINT) AS overlays,
           CAST(SUM(gpu_slots) AS BIGINT) AS gpu
    FROM instances WHERE active AND NOT deleted GROUP BY host_id
), vol AS (
    SELECT host_id, CAST(SUM(size_bytes) AS BIGINT) AS bytes FROM volumes WHERE NOT deleted GROUP BY host_id
), img AS (
    SELECT host_id, CAST(SUM(size_bytes) AS BIGINT) AS bytes FROM images WHERE NOT deleted GROUP BY host_id
), held AS (
    SELECT host_id,
           CAST(SUM(vcpus) AS BIGINT) AS cpu,
           CAST(SUM(memory_bytes) AS BIGINT) AS memory,
           CAST(SUM(disk_bytes) AS BIGINT) AS disk,
           CAST(SUM(network_bps) AS BIGINT) AS network,
           CAST(SUM(disk_io_bps) AS BIGINT) AS disk_io, CAST(SUM(gpu) AS BIGINT) AS gpu
    FROM reservations WHERE status = 'held' AND {held_filter} GROUP BY host_id
)
""" + _USAGE_V1[_USAGE_V1.index("SELECT h.host_id,") :]


def available_sql(limit: str, allocated: str, pending: str) -> str:
    """`core.capacity.available` in SQL: what is left to promise, never negative
    (`max(0, limit − allocated − pending)`); tests hold the two equal on both engines."""
    left = f"({limit}) - ({allocated}) - ({pending})"
    return f"CASE WHEN {left} > 0 THEN {left} ELSE 0 END"


_RESOURCE_STATUS_V2 = """
SELECT c.host_id, c.resource, c.capacity, c.effective_limit, s.allocated, s.pending,
       {available} AS available,
       c.oversub_ratio, c.source
FROM capacities c
JOIN (
    SELECT c.host_id, c.resource, {allocated} AS allocated, {pending} AS pending
    FROM capacities c JOIN ledger_usage u ON u.host_id = c.host_id
) s ON s.host_id = c.host_id AND s.resource = c.resource
"""


def views_v2(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT) in creation order for schema version 2."""
    now = _NOW[dialect]
    status = _RESOURCE_STATUS_V2.format(
        available=available_sql("c.effective_limit", "s.allocated", "s.pending"),
        allocated=_PER_RESOURCE.format(p=""),
        pending=_PER_RESOURCE.format(p="pend_"),
    )
    return [
        ("ledger_usage", _USAGE_V2.format(held_filter=f"expires_at > {now}")),
        ("ledger_audit", _USAGE_V2.format(held_filter="1 = 1")),
        ("resource_status", status),
        ("instance_allocations", _INSTANCE_ALLOCATIONS_V1),
        ("disk_breakdown", _DISK_BREAKDOWN_V1),
        ("allocation_history", _ALLOCATION_HISTORY_V1),
        ("ledger_drift", _drift_v1()),
    ]


# ---- version 3: the fleet ---------------------------------------------------------------------------------

_FLEET_STATUS_V3 = """
SELECT c.host_id, c.resource, c.capacity, c.effective_limit, t.allocated, t.pending,
       {available} AS available,
       c.oversub_ratio, c.source, h.labels
FROM capacities c
JOIN hosts h ON h.host_id = c.host_id
JOIN (
    SELECT h.host_id, c.resource, {allocated} AS allocated, {pending} AS pending
    FROM hosts h JOIN capacities c ON c.host_id = h.host_id
) t ON t.host_id = c.host_id AND t.resource = c.resource
"""
# the running totals a host row keeps, per resource (disk adds its four parts)
_TOTALS_ALLOCATED = """CASE c.resource WHEN 'cpu' THEN h.alloc_cpu WHEN 'memory' THEN h.alloc_memory
           WHEN 'disk' THEN h.images_bytes + h.oci_cache_bytes + h.volumes_bytes + h.overlays_bytes
           WHEN 'network' THEN h.alloc_network WHEN 'disk_io' THEN h.alloc_disk_io END"""
_TOTALS_PENDING = """CASE c.resource WHEN 'cpu' THEN h.pend_cpu WHEN 'memory' THEN h.pend_memory
           WHEN 'disk' THEN h.pend_disk WHEN 'network' THEN h.pend_network
           WHEN 'disk_io' THEN h.pend_disk_io END"""


# what is left of each limit, kept on the host row for fleet searches, audited against the totals it
# comes from (disk adds its four parts)
_AVAIL_DRIFT = {
    "cpu": ("alloc_cpu", "pend_cpu"),
    "memory": ("alloc_memory", "pend_memory"),
    "disk": ("images_bytes + h.oci_cache_bytes + h.volumes_bytes + h.overlays_bytes", "pend_disk"),
    "network": ("alloc_network", "pend_network"),
    "disk_io": ("alloc_disk_io", "pend_disk_io"),
}


def _drift_v3() -> str:
    """ledger_drift in one pass: the audit's sums are computed once and each total compared on a row of its
    own (version 1 recomputed them once per total, fifteen passes over every instance); plus each host's
    stored `avail_*` against what its stored limits and totals leave."""
    names = ", ".join(f"('{name}')" for name, _, _ in _DRIFT_COLUMNS)
    stored = " ".join(f"WHEN '{name}' THEN h.{column}" for name, column, _ in _DRIFT_COLUMNS)
    audited = " ".join(f"WHEN '{name}' THEN a.{column}" for name, _, column in _DRIFT_COLUMNS)
    totals = (
        f"WITH a AS MATERIALIZED (SELECT * FROM ledger_audit), names(total) AS (VALUES {names}) "
        f"SELECT h.host_id, n.total, CASE n.total {stored} END AS stored, "
        f"CASE n.total {audited} END AS recomputed, "
        f"(CASE n.total {stored} END) - (CASE n.total {audited} END) AS drift "
        "FROM hosts h JOIN a ON a.host_id = h.host_id CROSS JOIN names n"
    )
    left = [
        f"SELECT h.host_id, 'available_{r}' AS total, h.avail_{r} AS stored, "
        f"{available_sql(f'h.limit_{r}', f'h.{alloc}', f'h.{pend}')} AS recomputed, "
        f"h.avail_{r} - ({available_sql(f'h.limit_{r}', f'h.{alloc}', f'h.{pend}')}) AS drift FROM hosts h"
        for r, (alloc, pend) in _AVAIL_DRIFT.items()
    ]
    return "\nUNION ALL\n".join([totals, *left])


def views_v3(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT) in creation order for schema version 3: version 2 plus `fleet_status`, which reads the
    hosts' running totals (what admission decides on) rather than recomputing them from the rows, and a
    `ledger_drift` that takes one pass over the rows and also audits the stored `avail_*`."""
    fleet = _FLEET_STATUS_V3.format(
        available=available_sql("c.effective_limit", "t.allocated", "t.pending"),
        allocated=_TOTALS_ALLOCATED,
        pending=_TOTALS_PENDING,
    )
    views = [(name, "" if name == "ledger_drift" else select) for name, select in views_v2(dialect)]
    return [*((n, _drift_v3() if n == "ledger_drift" else q) for n, q in views), ("fleet_status", fleet)]


# ---- version 4: what VMs really use ---------------------------------------------------------------------
# "p95" in these views is the highest hourly p95 kept (LEDGER_RETENTION_USAGE_DAYS, 14 days by default):
# the busiest hour's typical peak, which is what a ratio must allow for.

_INSTANCE_UTILIZATION_V4 = """
SELECT i.host_id, i.instance_id, i.name AS instance_name, i.state,
       i.vcpus AS allocated_vcpus, i.memory_bytes AS allocated_memory_bytes,
       i.network_bps AS allocated_network_bps, i.disk_io_bps AS allocated_disk_io_bps,
       l.at AS sampled_at, l.unmeasured_reason,
       l.cpu_vcpus, l.memory_rss_bytes, l.disk_read_bps, l.disk_write_bps, l.network_rx_bps, l.network_tx_bps,
       COALESCE(r.hours, 0) AS hours, {p95}
FROM instances i
LEFT JOIN usage_latest l ON l.host_id = i.host_id AND l.instance_id = i.instance_id
LEFT JOIN (
    SELECT host_id, instance_id, COUNT(*) AS hours, {max_p95}
    FROM usage_hourly GROUP BY host_id, instance_id
) r ON r.host_id = i.host_id AND r.instance_id = i.instance_id
WHERE i.active AND NOT i.deleted
"""

_HOST_UTILIZATION_V4 = """
SELECT c.host_id, c.resource, c.capacity, c.effective_limit, {allocated} AS allocated,
       {used_p95} AS used_p95, {used_max} AS used_max, c.oversub_ratio, COALESCE(u.hours, 0) AS hours
FROM capacities c
JOIN hosts h ON h.host_id = c.host_id
LEFT JOIN (
    SELECT host_id, COUNT(*) AS hours, {max_stats}
    FROM host_usage_hourly GROUP BY host_id
) u ON u.host_id = c.host_id
"""


def _used(stat: str) -> str:
    """Per resource (a capacities row `c`), the host's usage summary column `u.<measure>_<stat>`."""
    branches = " ".join(f"WHEN '{r.value}' THEN u.{m}_{stat}" for r, m in RESOURCE_MEASURES.items())
    return f"CASE c.resource {branches} END"


def views_v4(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT) in creation order for schema version 4: version 3 plus `instance_utilization`
    (allocated beside used, latest and p95) and `host_utilization` (per resource: limit, allocated, used)."""
    measures = list(RESOURCE_MEASURES.values())
    instance = _INSTANCE_UTILIZATION_V4.format(
        p95=", ".join(f"r.{m}_p95" for m in measures),
        max_p95=", ".join(f"MAX({m}_p95) AS {m}_p95" for m in measures),
    )
    host = _HOST_UTILIZATION_V4.format(
        allocated=_TOTALS_ALLOCATED,
        used_p95=_used("p95"),
        used_max=_used("max"),
        max_stats=", ".join(f"MAX({m}_{s}) AS {m}_{s}" for m in measures for s in ("p95", "max")),
    )
    return [*views_v3(dialect), ("instance_utilization", instance), ("host_utilization", host)]


current = views_v4  # the views the newest migration creates
