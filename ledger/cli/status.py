"""`ledger status`: capacity, limits and usage per resource, and what each instance holds."""

from __future__ import annotations

import argparse
from typing import Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.cli.remote import via_service
from ledger.cli.render import render_status
from ledger.config import Settings
from ledger.local import ensure_host, open_ledger


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "status",
        help="show capacity, limits, allocations and pending reservations",
        description="Per resource: capacity, effective limit, allocated, pending, available, ratio, source, "
        "with a usage bar; then each active instance's allocation. Reads the database directly "
        "(the local host is registered on first use), or asks the service when --nats-url is given.",
    )
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument("--json", action="store_true", help="print the FullResourceStatus JSON")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url:
        status = via_service(settings, lambda client: client.status(host=args.host))
    else:
        ledger = open_ledger(settings)
        try:
            host = ensure_host(ledger, settings, args.host)
            status = ledger.full_status(host).to_dict()
        finally:
            ledger.close()
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    return EXIT_OK
