"""`ledger db`: migrate the database, check the schema, prune what the retention settings let go."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from ledger.cli.common import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, error, print_json
from ledger.config import SETTINGS, Settings


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "db",
        help="migrate the database, show its revision, check models against migrations, prune old rows",
        description=textwrap.fill(  # filled here: the epilog's list keeps its lines, so this must too
            "Database schema management (Alembic migrations shipped with ledger), and pruning. "
            "`upgrade` (and `ledger serve`) are the only commands that create or migrate a database; "
            "the others need it to exist, `check` and `prune` at the newest revision.",
            width=79,
        ),
        epilog=_retention_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        choices=["upgrade", "downgrade", "current", "check", "prune"],
        help="upgrade: create the database if needed and migrate it to the newest schema (or REVISION); "
        "downgrade: migrate back to REVISION ('base' empties it); current: print the revision; check: fail "
        "if the models and migrations drift; prune: delete now what the retention_* settings let go "
        "(`ledger serve` does it in the background)",
    )
    parser.add_argument("revision", nargs="?", default=None, help="target revision for upgrade/downgrade")
    parser.add_argument("--dry-run", action="store_true", help="prune: count what would go, delete nothing")
    parser.add_argument("--json", action="store_true", help="prune: print the report as JSON")
    parser.set_defaults(handler=run)
    return parser


def _retention_help() -> str:
    """What `prune` deletes, from the settings registry: each retention setting, its default, its meaning."""
    intro = (
        "prune deletes what these settings let go (in days; 0 keeps forever; a held reservation is never "
        "pruned). Set them in the environment or the --config file:"
    )
    lines = [textwrap.fill(intro, width=79)]
    for setting in SETTINGS:
        if setting.key.startswith("retention_"):
            head = f"{setting.env[0]} (default {setting.default:g}): {setting.help}"
            lines.append(textwrap.fill(head, width=79, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.store import migrate

    url = settings.database_url
    if args.action == "prune":
        return prune(args, settings)
    if args.dry_run or args.json:
        error("--dry-run and --json go with `ledger db prune`")
        return EXIT_USAGE
    if args.revision is not None and args.action not in {"upgrade", "downgrade"}:
        error(f"`ledger db {args.action}` takes no revision")
        return EXIT_USAGE
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
        print(f"database at revision {args.revision or migrate.head_revision()}")
        return EXIT_OK
    if args.action == "downgrade":
        if not args.revision:
            error("downgrade needs a target revision, e.g. `ledger db downgrade base`")
            return EXIT_USAGE
        migrate.downgrade(url, args.revision)
        print(f"database at revision {args.revision}")
        return EXIT_OK
    if args.action == "current":
        return current(settings)
    drift = migrate.check(url)
    if drift:
        error(f"models and migrations differ: {drift}")
        return EXIT_INTERNAL
    print("models and migrations agree")
    return EXIT_OK


def current(settings: Settings) -> int:
    """The revision of an existing database (read-only: asking never creates one)."""
    from ledger.store import migrate
    from ledger.store.engine import make_engine

    engine = make_engine(settings.database_url, read_only=True)
    try:
        revision = migrate.revision_of(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    if revision == head:
        state = "up to date"
    elif revision is not None and revision not in migrate.revisions():
        state = f"unknown to this ledger, whose head is {head}: a newer ledger migrated it"
    else:
        state = f"behind: head is {head}"
    print(f"{revision or 'empty'} ({state})")
    return EXIT_OK


def prune(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.bus.jetstream import DUPLICATE_WINDOW_S, DURABLE
    from ledger.local import open_writer
    from ledger.store.retention import TABLES, Limits, Retention
    from ledger.store.usage import USAGE_TABLES

    ledger = open_writer(settings)
    try:
        retention = Retention(ledger.db, consumer=DURABLE, duplicate_window_s=DUPLICATE_WINDOW_S)
        report = retention.prune(Limits.of(settings), dry_run=args.dry_run).to_dict()
        usage_days = settings.retention_usage_days  # what `ledger serve`'s usage consumer prunes hourly
        report["deleted"] |= ledger.usage.prune_tables(usage_days, dry_run=args.dry_run)
    finally:
        ledger.close()
    if usage_days <= 0:
        report["kept_forever"] |= dict.fromkeys(USAGE_TABLES, "retention_usage_days")
    report["total"] = sum(report["deleted"].values())
    if args.json:
        print_json(report)
        return EXIT_OK
    verb = "would be deleted" if args.dry_run else "deleted"
    for table in (*TABLES, *USAGE_TABLES):
        setting = report["kept_forever"].get(table)
        shown = f"kept forever ({setting} = 0)" if setting else f"{report['deleted'][table]:>9} {verb}"
        print(f"{table:<17} {shown}")
    print(f"{'total':<17} {report['total']:>9} {verb}")
    return EXIT_OK
