"""`ledger db`: migrate the database and check the schema."""

from __future__ import annotations

import argparse
from typing import Any

from ledger.cli.common import EXIT_OK, error
from ledger.config import Settings
from ledger.store import migrate
from ledger.store.engine import make_engine


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "db",
        help="migrate the database, show its revision, check models against migrations",
        description="Database schema management (Alembic migrations shipped with ledger).",
    )
    parser.add_argument(
        "action",
        choices=["upgrade", "downgrade", "current", "check"],
        help="upgrade: migrate to the newest schema (or REVISION); downgrade: migrate back to REVISION "
        "('base' empties it); current: print the revision; check: fail if the models and migrations drift",
    )
    parser.add_argument("revision", nargs="?", default=None, help="target revision for upgrade/downgrade")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
        print(f"database at revision {migrate.head_revision() if not args.revision else args.revision}")
        return EXIT_OK
    if args.action == "downgrade":
        if not args.revision:
            error("downgrade needs a target revision, e.g. `ledger db downgrade base`")
            return 2
        migrate.downgrade(url, args.revision)
        print(f"database at revision {args.revision}")
        return EXIT_OK
    if args.action == "current":
        engine = make_engine(url)
        try:
            current = migrate.current_revision(engine)
        finally:
            engine.dispose()
        head = migrate.head_revision()
        state = "up to date" if current == head else f"behind: head is {head}"
        print(f"{current or 'empty'} ({state})")
        return EXIT_OK
    drift = migrate.check(url)
    if drift:
        error(f"models and migrations differ: {drift}")
        return 1
    print("models and migrations agree")
    return EXIT_OK
