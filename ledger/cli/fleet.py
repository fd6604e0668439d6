"""`ledger fit` (where would this VM fit?) and `ledger place` (hold it on the best host)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.cli.render import render_candidates
from ledger.cli.reserve import add_amount_flags, request_from
from ledger.config import Settings
from ledger.core.charges import Ask
from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.core.placement import (
    DEFAULT_ATTEMPTS,
    DEFAULT_LIMIT,
    LABELS,
    MAX_ATTEMPTS,
    MAX_LIMIT,
    POLICIES,
    SPREAD,
    Shortfalls,
    check_labels,
    check_limit,
    parse_labels,
)


def _label(text: str) -> dict[str, str]:
    try:
        return parse_labels(text, "--label")
    except InvalidRequest as exc:  # argparse names the flag already
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--label: ")) from None


def _count(flag: str, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return check_limit(int(text), flag, maximum)
        except (ValueError, InvalidRequest):
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number from 1 to {maximum}") from None

    return parse


def _add_search_flags(parser: argparse.ArgumentParser) -> None:
    """The amounts (as `ledger validate` takes them) and where to look for a host."""
    add_amount_flags(parser, "each host's")
    parser.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a label the host must carry (repeatable; NAME=VALUE,NAME=VALUE also works)",
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="HOST", help="leave this host out (repeatable)"
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default=SPREAD,
        help="spread: the host left with the most room first (default); pack: the least room first",
    )


def register_fit(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "fit",
        help="list the hosts an instance fits on, best first (holds nothing)",
        description="Every host that carries the labels and has room for the amounts (default bandwidths "
        "included, as `validate` charges them), ranked by --policy, with what each has available; then how "
        "many hosts were considered and fit, and why the others do not. Nothing is held. When no host "
        "fits, prints why on stderr and exits 3. Uses the database directly, or the running service when "
        "--nats-url is given.",
    )
    _add_search_flags(parser)
    parser.add_argument(
        "--limit",
        type=_count("--limit", MAX_LIMIT),
        default=DEFAULT_LIMIT,
        help=f"list at most this many hosts (1 to {MAX_LIMIT}; default {DEFAULT_LIMIT})",
    )
    parser.add_argument("--json", action="store_true", help="print the candidates reply as JSON")
    parser.set_defaults(handler=run_fit)
    return parser


def register_place(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "place",
        help="reserve an instance on the best host that fits (prints the host and the reservation id)",
        description="Find the best host, as `ledger fit` ranks them, and hold the amounts there in one "
        "step; if a concurrent request took the room first, the next host is tried, up to --attempts. "
        "Prints HOST RESERVATION_ID; when no host fits, prints why on stderr and exits 3. The hold lasts "
        "--ttl seconds unless an instance event consumes it or `ledger release` gives it back. Uses the "
        "database directly, or the running service when --nats-url is given.",
    )
    _add_search_flags(parser)
    parser.add_argument(
        "--attempts",
        type=_count("--attempts", MAX_ATTEMPTS),
        default=DEFAULT_ATTEMPTS,
        help=f"hosts to try at most (1 to {MAX_ATTEMPTS}; default {DEFAULT_ATTEMPTS})",
    )
    parser.add_argument(
        "--key",
        default=None,
        help="idempotency key, unique across the fleet: a retry with the same key gets the same reservation",
    )
    parser.add_argument(
        "--ttl", type=float, default=None, help="seconds the hold lasts (default from config: 60)"
    )
    parser.add_argument("--json", action="store_true", help="print the grant as JSON")
    parser.set_defaults(handler=run_place)
    return parser


def _labels(args: argparse.Namespace) -> dict[str, str]:
    merged: dict[str, str] = {}
    for pairs in args.label:
        merged.update(pairs)
    return check_labels(merged, "--label")


def _shortfalls(reply: Mapping[str, Any], labels: Mapping[str, str]) -> Shortfalls:
    """The reply's counts as Shortfalls. The reply counts the hosts that lack a requested label together,
    so with several labels they are reported as lacking one or another."""
    counts = reply["shortfalls"]
    lacking = " or ".join(f"{name}={value}" for name, value in labels.items())
    return Shortfalls(
        reply["considered"],
        reply["fitting"],
        {k: n for k, n in counts.items() if k != LABELS},
        {lacking: counts[LABELS]} if labels else {},
    )


def run_fit(args: argparse.Namespace, settings: Settings) -> int:
    request, labels = request_from(args), _labels(args)
    if settings.nats_url:
        from ledger.cli.remote import via_service

        body = {
            **asdict(request),
            "labels": labels,
            "exclude_hosts": args.exclude,
            "policy": args.policy,
            "limit": args.limit,
        }
        reply = via_service(settings, lambda client: client.call("candidates", body))
    else:
        from ledger.local import open_reader

        ledger = open_reader(settings)
        try:
            search = ledger.candidates(
                request, labels=labels, exclude=args.exclude, policy=args.policy, limit=args.limit
            )
        finally:
            ledger.close()
        reply = search.to_dict()
    shortfalls = _shortfalls(reply, labels)
    if args.json:
        print_json(reply)
    elif reply["candidates"]:
        print(render_candidates(reply, shortfalls))
    if not reply["candidates"]:
        raise InsufficientResources(
            shortfalls.summary(),
            considered=reply["considered"],
            fitting=reply["fitting"],
            shortfalls=reply["shortfalls"],
        )
    return EXIT_OK


def run_place(args: argparse.Namespace, settings: Settings) -> int:
    request, labels = request_from(args), _labels(args)
    if settings.nats_url:
        from ledger.cli.remote import via_service

        body = {
            **asdict(request),
            "labels": labels,
            "exclude_hosts": args.exclude,
            "policy": args.policy,
            "attempts": args.attempts,
            "idempotency_key": args.key,
            "ttl_seconds": args.ttl,
        }
        grant = {"ok": True, **via_service(settings, lambda client: client.call("place", body))}
    else:
        from ledger.local import open_writer

        ledger = open_writer(settings)
        try:
            ask = Ask(request, args.key, args.ttl)
            placed = ledger.place(
                ask, labels=labels, exclude=args.exclude, policy=args.policy, attempts=args.attempts
            )
        finally:
            ledger.close()
        grant = placed.to_dict()
    if args.json:
        print_json(grant)
    else:
        print(f"{grant['host']} {grant['reservation_id']}")
    return EXIT_OK
