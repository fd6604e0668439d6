"""Human rendering of status for the terminal (works on the JSON shape, so NATS replies render the same)."""

from __future__ import annotations

from typing import Any

from ledger.core.capacity import format_amount
from ledger.core.resources import ResourceType
from ledger.core.units import format_bytes

BAR_WIDTH = 24


def usage_bar(used: int, pending: int, limit: int, width: int = BAR_WIDTH) -> str:
    """`[#####++.....]  42%`: # allocated, + pending reservations, . free (of the effective limit)."""
    if limit <= 0:
        return "[" + "?" * width + "]   n/a"
    used_cells = min(width, round(width * used / limit))
    pending_cells = min(width - used_cells, round(width * pending / limit))
    free_cells = width - used_cells - pending_cells
    percent = 100 * (used + pending) / limit
    return f"[{'#' * used_cells}{'+' * pending_cells}{'.' * free_cells}] {percent:4.0f}%"


def render_status(status: dict[str, Any]) -> str:
    lines = [f"host {status['host']}", ""]
    header = f"{'resource':<9} {'usage (# allocated, + pending)':<{BAR_WIDTH + 8}}  {'allocated':>12} "
    header += f"{'pending':>12} {'available':>12} {'limit':>12}  {'ratio':>5}  source"
    lines.append(header)
    for resource in ResourceType:
        r = status[resource.value]

        def amount(value: int, resource: ResourceType = resource) -> str:
            return format_amount(resource, value).replace(" vCPUs", "")

        lines.append(
            f"{resource.value:<9} {usage_bar(r['allocated'], r['pending'], r['effective_limit'])}  "
            f"{amount(r['allocated']):>12} {amount(r['pending']):>12} {amount(r['available']):>12} "
            f"{amount(r['effective_limit']):>12}  {r['oversub_ratio']:>4.1f}x  {r['source']}"
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
