"""`ledger discover`: what this host (or a recorded host tree) can offer, and how each value was found."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.cli.common import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, error, print_json
from ledger.config import Settings
from ledger.core.gpu import GPUStatus, PassthroughDevice
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.core.units import format_bandwidth, format_byte_rate, format_bytes

if TYPE_CHECKING:
    from ledger.discovery import HostCapacities


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "discover",
        help="detect this host's CPU, memory, disk, network, disk I/O and GPUs",
        description="Detect the host's raw capacities and say where each came from (configured, detected, "
        "default, or undetected with the setting that fixes it). Nothing is stored.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read <ROOT>/proc and <ROOT>/sys instead of the host's (e.g. a recorded host tree)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    root: Path = args.root
    if not root.is_dir():
        error(f"--root {root}: no such directory")
        return EXIT_USAGE
    from ledger.discovery import discover

    try:
        found = discover(settings, root=root)
    except OSError as exc:  # readers tolerate bad files; this is e.g. an unreadable root itself
        error(f"cannot read host information under {root}: {exc}")
        return EXIT_INTERNAL
    if args.json:
        print_json(found.to_dict())
    else:
        print(render_table(found))
    return EXIT_OK


def format_capacity(resource: ResourceType, capacity: Capacity) -> str:
    """The capacity in the units people use for it; an undetected value shows as "unknown", not 0."""
    if capacity.source is Source.UNDETECTED:
        return "unknown"
    if resource is ResourceType.CPU:
        return f"{capacity.capacity} vCPUs"
    if resource is ResourceType.NETWORK:
        return format_bandwidth(capacity.capacity)
    if resource is ResourceType.DISK_IO:
        return format_byte_rate(capacity.capacity)
    return format_bytes(capacity.capacity)


def render_table(found: HostCapacities) -> str:
    """Resource, capacity, source and hint columns, then one line for the GPUs."""
    rows = [("resource", "capacity", "source", "hint")]
    for resource in ResourceType:
        capacity = found.get(resource)
        rows.append(
            (resource.value, format_capacity(resource, capacity), capacity.source, capacity.hint or "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{name:<{widths[0]}}  {amount:<{widths[1]}}  {source:<{widths[2]}}  {hint}".rstrip()
        for name, amount, source, hint in rows
    ]
    lines.append(f"{'gpu':<{widths[0]}}  {describe_gpu(found.gpu)}")
    return "\n".join(lines)


def describe_gpu(gpu: GPUStatus | None) -> str:
    """One line: mode, slots, and the profiles or devices."""
    if gpu is None:
        return "none (no NVIDIA GPU found)"
    slots = "slot" if gpu.total_slots == 1 else "slots"
    head = f"{gpu.mode}: {gpu.total_slots} {slots}, {gpu.used_slots} used"
    details = [
        f"{p.name} ({p.type_id}, {format_bytes(p.framebuffer_mb * 2**20)}, {p.available} free)"
        for p in gpu.profiles
    ]
    details += [describe_device(d) for d in gpu.devices]
    return f"{head}; {'; '.join(details)}" if details else head


def describe_device(device: PassthroughDevice) -> str:
    state = "available" if device.available else "in use"
    return f"{device.name} {device.pci_address} [{device.driver or 'no driver'}] {state}"
