"""`ledger status`: capacity, limits and usage per resource, and what each instance holds; with `--all`, a
line per host of the fleet."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from ledger.cli.common import EXIT_OK, note, print_json
from ledger.cli.ratios import drifts
from ledger.cli.render import render_fleet_status, render_status, used_fraction
from ledger.config import Settings
from ledger.core.errors import InvalidRequest
from ledger.core.resources import ResourceType

if TYPE_CHECKING:
    from ledger.client import LedgerClient
    from ledger.core.results import FullStatus

SORT_KEYS = ("host", *(r.value for r in ResourceType))
_CONCURRENT = 16  # status requests in flight at once when asking the service about every host


# fleet_status: a row per host and resource, from the hosts' running totals (docs/sql.md)
def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "status",
        help="show capacity, limits, allocations and pending reservations",
        description="Per resource: capacity, effective limit, allocated, pending, available, ratio, source, "
        "with a usage bar; then each active instance's allocation. Reads the database (read-only: it must "
        "exist, be migrated and have this host registered, see `ledger host refresh`), or asks the service "
        "when --nats-url is given. A ratio set in the configuration that differs from the one the host was "
        "registered with is pointed out. With --all, one line per host: its labels and a usage bar per "
        "resource (from the database, a hold that expired since its host was last touched still shows as "
        "pending).",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--host", default=None, help="host id (default: this host)")
    which.add_argument("--all", action="store_true", help="every host of the ledger, one line each")
    parser.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default=None,
        help="with --all: by host id (default), or by the share of a resource in use, fullest first",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the FullResourceStatus JSON (with --all: a list, one per host)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.all:
        return run_all(args, settings)
    if args.sort is not None:
        raise InvalidRequest("--sort goes with --all")
    status = _status(settings, args.host)
    remarks = [drift.describe() for drift in drifts(settings, status)]
    if args.json:
        print_json(status.to_dict())
        for remark in remarks:
            note(remark)
    else:
        print(render_status(status.to_dict()))
        if remarks:
            print("\n" + "\n".join(f"note: {remark}" for remark in remarks))
    return EXIT_OK


def _status(settings: Settings, host: str | None) -> FullStatus:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        return via_service(settings, lambda client: client.status(host=host))
    from ledger.local import open_reader, target_host

    ledger = open_reader(settings)
    try:
        return ledger.full_status(target_host(ledger, settings, host))
    finally:
        ledger.close()


def run_all(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        hosts = via_service(settings, _ask_every_host)
    else:
        from ledger.local import open_reader

        ledger = open_reader(settings)
        try:
            hosts = ledger.fleet_status()
        finally:
            ledger.close()
    hosts = _sorted(hosts, args.sort or "host")
    if args.json:
        print_json(hosts)
    else:
        print(render_fleet_status(hosts))
    return EXIT_OK


async def _ask_every_host(client: LedgerClient) -> list[dict[str, Any]]:
    """`hosts`, then each host's `status` without its instances (a few requests in flight at once)."""
    slots = asyncio.Semaphore(_CONCURRENT)

    async def one(host: str) -> dict[str, Any]:
        async with slots:
            status = (await client.status(host=host, limit=0)).to_dict()
        return {"host": status["host"], "labels": status["labels"]} | {
            r.value: status[r.value] for r in ResourceType
        }

    return list(await asyncio.gather(*(one(host) for host in await client.hosts())))


def _sorted(hosts: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """By host id, or by the share of `key` in use, fullest first (hosts without a limit last)."""
    by_host = sorted(hosts, key=lambda host: host["host"])
    if key == "host":
        return by_host

    def fullest(host: dict[str, Any]) -> float:
        used = used_fraction(host[key])
        return -1.0 if used is None else used

    return sorted(by_host, key=fullest, reverse=True)
