"""`ledger reservations`: the holds validate and place made, as they are now. One by id or by its
idempotency key (from the database, or the service's `ledger.v1.reservation` with --nats-url), or a page
of them by host and status (from the database, read-only)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.config import Settings
from ledger.core.errors import InvalidRequest
from ledger.core.results import RESERVATION_STATUSES, ReservationInfo

if TYPE_CHECKING:
    from ledger.store.ledger import Ledger


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "reservations",
        help="look reservations up: one by id or idempotency key, or a page by host and status",
        description="With an ID or --key: that reservation as it is now (status, times, the instance that "
        "consumed it, what it charged); through the service when --nats-url is given. Otherwise a page of "
        "reservations in id order, filtered by --host and --status, with the total; lists read the "
        "database (read-only). A hold past its expiry shows `held` until its host is next locked.",
    )
    parser.add_argument("reservation_id", nargs="?", default=None, help="the id validate or place printed")
    parser.add_argument("--key", default=None, help="the idempotency key it was made with (with --host)")
    parser.add_argument("--host", default=None, help="host id (a lookup by --key: default this host)")
    parser.add_argument("--status", choices=RESERVATION_STATUSES, default=None, help="list only these")
    parser.add_argument("--limit", type=int, default=100, help="list at most this many (default 100)")
    parser.add_argument("--after", default=None, metavar="ID", help="list the ones after this id")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.reservation_id is not None and args.key is not None:
        raise InvalidRequest("give a reservation id or --key, not both")
    if args.reservation_id is not None or args.key is not None:
        return _show(_lookup(args, settings), args.json)
    if args.limit < 1:
        raise InvalidRequest("--limit must be at least 1")
    if settings.nats_url:
        raise InvalidRequest(
            "listing reservations reads the database (LEDGER_DATABASE_URL); "
            "over --nats-url give an id or --key"
        )
    from ledger.local import open_reader

    ledger = open_reader(settings)
    try:
        page, total = ledger.list_reservations(
            host_id=args.host, status=args.status, limit=args.limit, after=args.after
        )
    finally:
        ledger.close()
    following = page[-1].reservation_id if len(page) == args.limit else None
    if args.json:
        print_json({"total": total, "reservations": [r.to_dict() for r in page], "next_after": following})
        return EXIT_OK
    print(f"{total} reservations" + (f"; these {len(page)} after {args.after}" if args.after else ""))
    for info in page:
        print(_line(info))
    if following is not None:
        print(f"more: ledger reservations --after {following}")
    return EXIT_OK


def _lookup(args: argparse.Namespace, settings: Settings) -> ReservationInfo:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        return via_service(
            settings,
            lambda client: client.reservation(args.reservation_id, host=args.host, idempotency_key=args.key),
        )
    from ledger.local import open_reader

    ledger = open_reader(settings)
    try:
        if args.reservation_id is not None:
            return ledger.reservation(args.reservation_id)
        return ledger.reservation_by_key(_host(ledger, settings, args.host), args.key)
    finally:
        ledger.close()


def _host(ledger: Ledger, settings: Settings, host: str | None) -> str:
    from ledger.local import target_host

    return target_host(ledger, settings, host)


def _show(info: ReservationInfo, as_json: bool) -> int:
    if as_json:
        print_json(info.to_dict())
    else:
        print(_line(info))
    return EXIT_OK


def _line(info: ReservationInfo) -> str:
    """id, host, status, when, key, what it holds: one reservation on one line."""
    ended = f" ended {info.ended_at:%Y-%m-%d %H:%M:%S}" if info.ended_at else ""
    consumed = f" by {info.instance_id}" if info.instance_id else ""
    key = f" key {info.idempotency_key}" if info.idempotency_key else ""
    held = ""
    if info.charge is not None:
        charge = info.charge
        held = f"  {charge.vcpus} vCPUs, {charge.memory_bytes} B memory, {charge.disk_bytes} B disk"
    return (
        f"{info.reservation_id}  {info.host_id}  {info.status:<8} made {info.created_at:%Y-%m-%d %H:%M:%S}"
        f"{ended}{consumed}{key}{held}"
    )
