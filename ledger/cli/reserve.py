"""`ledger validate` (= reserve) and `ledger release`."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.config import Settings
from ledger.core.charges import AllocationRequest
from ledger.core.errors import InvalidRequest
from ledger.core.units import UnitError, parse_bandwidth, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bandwidth(text: str) -> int:
    try:
        return parse_bandwidth(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def vcpus_type(text: str) -> int:
    """argparse type: a whole number of vCPUs, at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of vCPUs") from None
    if value < 0:
        raise argparse.ArgumentTypeError("vCPUs cannot be negative")
    return value


def add_amount_flags(parser: argparse.ArgumentParser, whose: str = "the host's") -> None:
    """What an instance asks for, as `validate`, `fit` and `place` take it (every amount optional); an
    unstated bandwidth is charged its vCPU share of `whose` capacity."""
    parser.add_argument("--vcpus", type=vcpus_type, default=0, help="vCPUs (default 0)")
    parser.add_argument("--memory", type=_size, default=0, help="memory size, e.g. 8GiB")
    parser.add_argument("--disk", type=_size, default=0, help="disk size, e.g. 50GB")
    for flag, name, example, what in (
        ("--network-down", "download", "1Gbps", "uplink"),
        ("--network-up", "upload", "1Gbps", "uplink"),
        ("--disk-io", "disk I/O", "200MB/s", "disk I/O"),
    ):
        parser.add_argument(
            flag,
            type=_bandwidth,
            default=None,
            help=f"{name} bandwidth, e.g. {example} (default: the vCPU share of {whose} {what})",
        )
    parser.add_argument("--gpu", action="store_true", help="needs a GPU slot")
    parser.add_argument("--gpu-profile", default=None, help="vGPU profile name")


AMOUNT_FLAGS = "--vcpus, --memory, --disk, --network-down, --network-up, --disk-io, --gpu or --gpu-profile"


def request_from(args: argparse.Namespace) -> AllocationRequest:
    """The amounts `add_amount_flags` parsed."""
    return AllocationRequest(
        vcpus=args.vcpus,
        memory_bytes=args.memory,
        disk_bytes=args.disk,
        network_download_bps=args.network_down,
        network_upload_bps=args.network_up,
        disk_io_bps=args.disk_io,
        needs_gpu=args.gpu,
        gpu_profile=args.gpu_profile,
    )


def register_validate(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "validate",
        help="check that an instance fits and reserve it (prints the reservation id)",
        description="Check every requested resource against what is left and hold it in one transaction. "
        "Prints the reservation id; a refusal prints the reason on stderr and exits 3. Every amount is "
        "optional, but give at least one. The hold lasts --ttl seconds unless an instance event consumes "
        "it or `ledger release` gives it back. Uses the database directly (the host must be registered: "
        "`ledger host refresh`), or the running service when --nats-url is given.",
    )
    add_amount_flags(parser)
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument(
        "--key", default=None, help="idempotency key: a retry with the same key gets the same answer"
    )
    parser.add_argument(
        "--ttl", type=float, default=None, help="seconds the hold lasts (default from config: 60)"
    )
    parser.add_argument("--json", action="store_true", help="print the grant as JSON")
    parser.set_defaults(handler=run_validate)
    return parser


def run_validate(args: argparse.Namespace, settings: Settings) -> int:
    request = request_from(args)
    if request == AllocationRequest():
        raise InvalidRequest(f"nothing to reserve: give at least one of {AMOUNT_FLAGS}")
    if settings.nats_url:
        from ledger.cli.remote import via_service

        body = {**asdict(request), "host": args.host, "idempotency_key": args.key, "ttl_seconds": args.ttl}
        grant = {"ok": True, **via_service(settings, lambda client: client.call("validate", body))}
    else:
        from ledger.local import open_writer, target_host

        ledger = open_writer(settings)
        try:
            host = target_host(ledger, settings, args.host)
            grant = ledger.reserve(host, request, idempotency_key=args.key, ttl=args.ttl).to_dict()
        finally:
            ledger.close()
    if args.json:
        print_json(grant)
    else:
        print(grant["reservation_id"])
    return EXIT_OK


def register_release(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "release",
        help="give a held reservation back",
        description="Release a reservation; releasing one that already ended says how it ended.",
    )
    parser.add_argument("reservation_id", help="the id `ledger validate` printed")
    parser.add_argument("--json", action="store_true", help="print the reservation as JSON")
    parser.set_defaults(handler=run_release)
    return parser


def run_release(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        info = via_service(settings, lambda client: client.release(args.reservation_id))
    else:
        from ledger.local import open_writer

        ledger = open_writer(settings)
        try:
            info = ledger.release(args.reservation_id)
        finally:
            ledger.close()
    if args.json:
        print_json(info.to_dict())
    else:
        print(f"{info.reservation_id} {info.status}")
    return EXIT_OK
