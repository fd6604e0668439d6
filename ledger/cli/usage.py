"""`ledger top` (a host's instances: allocated beside used, live) and `ledger advise` (the ratio the observed
usage supports). Both read the database, read-only: usage is what samplers stored (docs/usage.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.config import Settings
from ledger.core.advice import DEFAULT_HEADROOM, DEFAULT_MIN_DAYS, DEFAULT_MIN_SAMPLES
from ledger.core.capacity import format_amount
from ledger.core.errors import InvalidRequest
from ledger.core.resources import ResourceType
from ledger.core.units import format_bytes

if TYPE_CHECKING:
    from ledger.store.ledger import Ledger

# what `top` sorts by: the used figure of each resource, largest first
SORT_KEYS: Mapping[str, str] = {
    "cpu": "cpu_vcpus",
    "memory": "memory_rss_bytes",
    "disk_io": "disk_io_bps",
    "network": "network_bps",
    "id": "instance_id",
}
DISK_IO = ResourceType.DISK_IO
TOP_QUERY = "SELECT * FROM instance_utilization WHERE host_id = :host"


def register_top(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "top",
        help="a host's running instances: allocated beside really used, refreshed live",
        description="One line per active instance of the host: its vCPUs, memory, network and disk I/O as "
        "allocated, and as its newest usage sample measured them (CPU in vCPUs busy, memory resident, "
        "bandwidths in bytes per second from the VM's side), with the busiest hour's p95. Reads the "
        "database (read-only). Refreshes every --interval seconds until Ctrl-C; --once prints once.",
    )
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument("--sort", choices=sorted(SORT_KEYS), default="cpu", help="sort by (default: cpu)")
    parser.add_argument("--once", action="store_true", help="print once and exit")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON once (implies --once)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    parser.set_defaults(handler=run_top)
    return parser


def register_advise(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "advise",
        help="the oversubscription ratio each resource's observed usage supports (changes nothing)",
        description="Per resource of the host: the ratio in force, and the largest ratio at which the "
        "busiest hour's p95 of the host's total usage, plus a headroom, still fits the physical capacity "
        "(ratio = allocated / (used × (1 + headroom)), rounded down; docs/usage.md). No suggestion "
        "without enough evidence (samples and days in the window). It never changes a ratio: set "
        "OVERSUB_<RESOURCE> and run `ledger host refresh`.",
    )
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument("--days", type=float, default=14.0, help="the evidence window in days (default 14)")
    parser.add_argument(
        "--headroom", type=float, default=DEFAULT_HEADROOM, help="over the p95 (default %(default)s: 20 %%)"
    )
    parser.add_argument(
        "--min-samples", type=int, default=DEFAULT_MIN_SAMPLES, help="fewest samples (default %(default)s)"
    )
    parser.add_argument(
        "--min-days",
        type=float,
        default=DEFAULT_MIN_DAYS,
        help="fewest days of samples (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the advice as JSON")
    parser.set_defaults(handler=run_advise)
    return parser


def _reader(settings: Settings, command: str) -> Ledger:
    if settings.nats_url:
        raise InvalidRequest(
            f"ledger {command} reads the database (LEDGER_DATABASE_URL); it does not use NATS (--nats-url)"
        )
    from ledger.local import open_reader

    return open_reader(settings)


def run_top(args: argparse.Namespace, settings: Settings) -> int:
    if args.interval <= 0:
        raise InvalidRequest("--interval must be a number of seconds greater than 0")
    from ledger.local import target_host

    ledger = _reader(settings, "top")
    try:
        host = target_host(ledger, settings, args.host)
        while True:
            rows = sorted_rows(instance_rows(ledger, host), args.sort)
            if args.json:
                print_json(rows)
                return EXIT_OK
            text = render_top(host, rows)
            if args.once:
                print(text)
                return EXIT_OK
            print("\033[H\033[2J" + text, flush=True)  # home and clear, as top does
            time.sleep(args.interval)
    finally:
        ledger.close()


def instance_rows(ledger: Ledger, host: str) -> list[dict[str, Any]]:
    """The instance_utilization view's rows for the host, plus the two derived used figures."""
    from sqlalchemy import text

    with ledger.db.read() as conn:
        rows = [dict(row) for row in conn.execute(text(TOP_QUERY), {"host": host}).mappings()]
    for row in rows:
        rx, tx = row["network_rx_bps"], row["network_tx_bps"]
        read, written = row["disk_read_bps"], row["disk_write_bps"]
        row["network_bps"] = max(rx, tx) if rx is not None and tx is not None else None
        row["disk_io_bps"] = read + written if read is not None and written is not None else None
        sampled = row["sampled_at"]  # a datetime on PostgreSQL, text on SQLite (a view keeps no type)
        row["sampled_at"] = sampled.isoformat(" ") if isinstance(sampled, datetime) else sampled
    return rows


def sorted_rows(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    by_id = sorted(rows, key=lambda row: row["instance_id"])
    if key == "id":
        return by_id
    column = SORT_KEYS[key]
    return sorted(by_id, key=lambda row: -(row[column] if row[column] is not None else -1.0))


def _rate(value: float | None, resource: ResourceType = ResourceType.NETWORK) -> str:
    """A bandwidth (bytes per second) the way the ledger prints that resource's amounts."""
    return "-" if value is None else format_amount(resource, int(value))


def render_top(host: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of the host's instances: allocated | used (now, and the busiest hour's p95)."""
    header = (
        f"{'instance':<20} {'vCPUs':>5} {'used':>6} {'p95':>6}  {'memory':>9} {'RSS':>9} {'p95':>9}  "
        f"{'net alloc':>11} {'rx':>11} {'tx':>11}  {'disk I/O':>11} {'read':>11} {'write':>11}"
    )
    lines = [f"host {host}: {len(rows)} active instances (allocated beside used; network from the VM's side)"]
    lines += ["", header]
    for row in rows:
        name = (row["instance_name"] or row["instance_id"])[:20]
        if row["unmeasured_reason"] is not None:
            lines.append(f"{name:<20} {row['allocated_vcpus']:>5}  unmeasured: {row['unmeasured_reason']}")
            continue
        cpu = "-" if row["cpu_vcpus"] is None else f"{row['cpu_vcpus']:.2f}"
        cpu95 = "-" if row["cpu_vcpus_p95"] is None else f"{row['cpu_vcpus_p95']:.2f}"
        rss = "-" if row["memory_rss_bytes"] is None else format_bytes(int(row["memory_rss_bytes"]))
        rss95 = row["memory_rss_bytes_p95"]
        rss95 = "-" if rss95 is None else format_bytes(int(rss95))
        lines.append(
            f"{name:<20} {row['allocated_vcpus']:>5} {cpu:>6} {cpu95:>6}  "
            f"{format_bytes(row['allocated_memory_bytes']):>9} {rss:>9} {rss95:>9}  "
            f"{_rate(row['allocated_network_bps']):>11} {_rate(row['network_rx_bps']):>11} "
            f"{_rate(row['network_tx_bps']):>11}  {_rate(row['allocated_disk_io_bps'], DISK_IO):>11} "
            f"{_rate(row['disk_read_bps'], DISK_IO):>11} {_rate(row['disk_write_bps'], DISK_IO):>11}"
        )
    if not rows:
        lines.append("no active instances")
    return "\n".join(lines)


def run_advise(args: argparse.Namespace, settings: Settings) -> int:
    if args.days <= 0 or args.headroom < 0 or args.min_samples < 0 or args.min_days < 0:
        raise InvalidRequest("--days must be > 0; --headroom, --min-samples and --min-days must be >= 0")
    from ledger.local import target_host

    ledger = _reader(settings, "advise")
    try:
        host = target_host(ledger, settings, args.host)
        advice = ledger.advise(
            host,
            window_days=args.days,
            headroom=args.headroom,
            min_samples=args.min_samples,
            min_days=args.min_days,
        )
    finally:
        ledger.close()
    if args.json:
        print_json({"host": host, "headroom": args.headroom, "advice": [a.to_dict() for a in advice]})
        return EXIT_OK
    window = f"the last {args.days:g} days"
    print(f"host {host}: ratios the usage of {window} supports (+{args.headroom:.0%} headroom)")
    print()
    print(f"{'resource':<9} {'ratio':>6} {'suggested':>9} {'samples':>8} {'days':>5}  why")
    for item in advice:
        suggested = "-" if item.suggested_ratio is None else f"{item.suggested_ratio:.1f}"
        evidence = item.evidence
        print(
            f"{item.resource.value:<9} {item.current_ratio:>6.1f} {suggested:>9} {evidence.samples:>8} "
            f"{evidence.days:>5.1f}  {item.reason}"
        )
    print()
    print("ratio = allocated / (busiest hour's p95 × (1 + headroom)); apply one with OVERSUB_<RESOURCE> and")
    print("`ledger host refresh`. Nothing was changed.")
    return EXIT_OK
