"""Human rendering of status for the terminal (works on the JSON shape, so NATS replies render the same)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ledger.core.capacity import format_amount
from ledger.core.placement import Shortfalls
from ledger.core.resources import ResourceType
from ledger.core.units import format_bytes

BAR_WIDTH = 24
FLEET_BAR_WIDTH = 10  # one bar per resource on a host's line


def usage_bar(
    used: int, pending: int, limit: int, width: int = BAR_WIDTH, really_used: float | None = None
) -> str:
    """`[==###++.....]  42%`: # allocated (= the part of it the VMs really use, when sampled), + pending
    reservations, . free (of the effective limit); the percentage is allocated plus pending."""
    if limit <= 0:
        return "[" + "?" * width + "]   n/a"
    used_cells = min(width, round(width * used / limit))
    pending_cells = min(width - used_cells, round(width * pending / limit))
    free_cells = width - used_cells - pending_cells
    really = 0 if really_used is None else min(used_cells, round(width * really_used / limit))
    percent = 100 * (used + pending) / limit
    allocated = "=" * really + "#" * (used_cells - really)
    return f"[{allocated}{'+' * pending_cells}{'.' * free_cells}] {percent:4.0f}%"


def _amount(resource: ResourceType, value: int) -> str:
    """An amount for a table column: the unit's own (vCPUs go without one, the column names them)."""
    return format_amount(resource, value).replace(" vCPUs", "")


def format_labels(labels: Mapping[str, str]) -> str:
    """`zone=a,rack=r12`, the form `--label` and LEDGER_HOST_LABELS take; `-` for none."""
    return ",".join(f"{name}={value}" for name, value in labels.items()) or "-"


def used_fraction(resource: Mapping[str, Any]) -> float | None:
    """Allocated plus pending as a fraction of the effective limit; None when there is no limit."""
    limit = int(resource["effective_limit"])
    if limit <= 0:
        return None
    return (int(resource["allocated"]) + int(resource["pending"])) / limit


def _columns(rows: Sequence[Sequence[str]], right: int = 0) -> list[str]:
    """The rows as aligned text; the columns from index `right` on are right-aligned (when > 0)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if right and i >= right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def render_fleet_status(hosts: Sequence[Mapping[str, Any]]) -> str:
    """One line per host (in the order given): its id, labels, and a usage bar per resource."""
    if not hosts:
        return "no hosts registered"
    rows = [["host", "labels", *(r.value for r in ResourceType)]]
    for host in hosts:
        bars = [
            usage_bar(s["allocated"], s["pending"], s["effective_limit"], FLEET_BAR_WIDTH)
            for s in (host[r.value] for r in ResourceType)
        ]
        rows.append([host["host"], format_labels(host.get("labels") or {}), *bars])
    return "\n".join(_columns(rows))


def render_candidates(candidates: Mapping[str, Any], shortfalls: Shortfalls) -> str:
    """The `candidates` reply as a table (host, score, what each has available), then the counts."""
    rows = [["host", "score", *(r.value for r in ResourceType)]]
    for candidate in candidates["candidates"]:
        available = candidate["available"]
        rows.append(
            [
                candidate["host"],
                f"{candidate['score']:.3f}",
                *(_amount(r, available[r.value]) for r in ResourceType),
            ]
        )
    footer = f"{shortfalls.considered} considered, {shortfalls.fitting} fit"
    reasons = shortfalls.reasons()
    return "\n".join([*_columns(rows, right=1), footer + ("; " + ", ".join(reasons) if reasons else "")])


def _used(resource: ResourceType, value: float | None) -> str:
    if value is None:
        return "-"
    if resource is ResourceType.CPU:
        return f"{value:.1f}"
    return _amount(resource, int(value))


def render_status(status: dict[str, Any]) -> str:
    """A host's status; a resource's `used` (what its VMs really use, from usage sampling; absent or None
    when not sampled) is drawn in the bar and shown beside what is allocated."""
    lines = [f"host {status['host']}", ""]
    legend = "usage (= used, # allocated, + pending)"
    header = f"{'resource':<9} {legend:<{BAR_WIDTH + 8}}  {'used':>10} {'allocated':>12} "
    header += f"{'pending':>12} {'available':>12} {'limit':>12}  {'ratio':>5}  source"
    lines.append(header)
    for resource in ResourceType:
        r = status[resource.value]
        allocated, pending = _amount(resource, r["allocated"]), _amount(resource, r["pending"])
        available, limit = _amount(resource, r["available"]), _amount(resource, r["effective_limit"])
        really = r.get("used")
        bar = usage_bar(r["allocated"], r["pending"], r["effective_limit"], really_used=really)
        lines.append(
            f"{resource.value:<9} {bar}  {_used(resource, really):>10} "
            f"{allocated:>12} {pending:>12} {available:>12} {limit:>12}  {r['oversub_ratio']:>4.1f}x  "
            f"{r['source']}"
        )
    for resource in ResourceType:
        hint = status[resource.value].get("hint")
        if hint:
            lines.append(f"{resource.value}: not detected; {hint}")
    disk = status.get("disk_breakdown")
    if disk:
        lines.append("")
        lines.append(
            "disk: images {} · OCI cache {} · volumes {} · overlays {}".format(
                *(
                    format_bytes(disk[k])
                    for k in ("images_bytes", "oci_cache_bytes", "volumes_bytes", "overlays_bytes")
                )
            )
        )
    gpu = status.get("gpu")
    if gpu:
        lines.append(
            f"gpu: {gpu['mode']}, {gpu['used_slots']} of {gpu['total_slots']} slots used"
            + (f", {gpu.get('pending_slots', 0)} held" if gpu.get("pending_slots") else "")
        )
    allocations = status.get("allocations") or []
    lines.append("")
    if not allocations:
        lines.append("no active instances")
        return "\n".join(lines)
    lines.append(
        f"{'instance':<24} {'state':<8} {'vCPUs':>5} {'memory':>10} {'disk':>10} {'net down':>11} "
        f"{'net up':>11} {'disk I/O':>10}  gpu"
    )
    for a in allocations:
        name = a["instance_name"] or a["instance_id"]
        lines.append(
            f"{name[:24]:<24} {a['state'][:8]:<8} {a['cpu']:>5} {format_bytes(a['memory_bytes']):>10} "
            f"{format_bytes(a['disk_bytes']):>10} "
            f"{format_amount(ResourceType.NETWORK, a['network_download_bps']):>11} "
            f"{format_amount(ResourceType.NETWORK, a['network_upload_bps']):>11} "
            f"{format_amount(ResourceType.DISK_IO, a['disk_io_bps']):>10}  {a['gpu'] or '-'}"
        )
    return "\n".join(lines)
