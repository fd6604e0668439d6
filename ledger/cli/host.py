"""`ledger host`: register this host's capacities, list known hosts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.config import Settings
from ledger.core.errors import ConfigError


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "host",
        help="register or refresh this host's capacities; list hosts",
        description="refresh: discover this host (id from --host-id / LEDGER_HOST_ID, default the hostname) "
        "and record its capacities and configured oversubscription ratios (the database must be migrated: "
        "`ledger db upgrade`). list: print known hosts (reads only).",
    )
    parser.add_argument("action", choices=["refresh", "list"])
    parser.add_argument("--root", type=Path, default=Path("/"), help="read /proc and /sys under DIR")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        return _list(args, settings)
    root: Path = args.root
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory", setting="root")
    from ledger.local import open_writer, refresh_host

    ledger = open_writer(settings)
    try:
        found = refresh_host(ledger, settings, root)
    finally:
        ledger.close()
    if args.json:
        print_json({"host": settings.host_id, **found.to_dict()})
    else:
        print(f"host {settings.host_id} registered")
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.local import open_reader

    ledger = open_reader(settings)
    try:
        ids = ledger.host_ids()
    finally:
        ledger.close()
    if args.json:
        print_json(ids)
    else:
        print("\n".join(ids) if ids else "no hosts registered")
    return EXIT_OK
