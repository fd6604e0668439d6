"""`ledger defaults` and `ledger image-pull-check`: the service's `defaults` and `image_pull_check`
endpoints on the command line (both read only)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ledger.cli.common import EXIT_OK, print_json
from ledger.cli.reserve import vcpus_type
from ledger.config import Settings
from ledger.core.capacity import format_amount
from ledger.core.resources import ResourceType
from ledger.core.units import format_bytes

if TYPE_CHECKING:
    from ledger.client import BandwidthDefaults, ImagePullCheck

_SOURCE = "Reads the database (read-only), or asks the service when --nats-url is given."


def register_defaults(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "defaults",
        help="the bandwidths an instance of N vCPUs is charged when it states none",
        description="What `validate` and instance records charge an instance that leaves its network or "
        "disk I/O bandwidth unstated: its vCPU share of the host's capacity (docs/protocol.md, Default "
        "bandwidths); the disk I/O burst is reported, not charged. " + _SOURCE,
    )
    parser.add_argument("--vcpus", type=vcpus_type, required=True, help="the instance's vCPUs")
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument("--json", action="store_true", help="print the defaults reply as JSON")
    parser.set_defaults(handler=run_defaults)
    return parser


def register_image_pull_check(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "image-pull-check",
        help="whether an image pull fits (disk left, and the cap on image storage)",
        description="An image pull needs at least 5 GiB of disk left to promise, and images plus the OCI "
        "cache must stay under MAX_IMAGE_STORAGE of the disk's capacity. Prints both; when one fails, says "
        "which on stderr and exits 3. " + _SOURCE,
    )
    parser.add_argument("--host", default=None, help="host id (default: this host)")
    parser.add_argument("--json", action="store_true", help="print the image_pull_check reply as JSON")
    parser.set_defaults(handler=run_image_pull_check)
    return parser


def run_defaults(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        found = via_service(settings, lambda client: client.defaults(args.vcpus, host=args.host))
    else:
        found = _defaults_from_database(settings, args.host, args.vcpus)
    if args.json:
        print_json(asdict(found))
        return EXIT_OK
    network, disk_io = ResourceType.NETWORK, ResourceType.DISK_IO
    print(f"host {found.host}, {found.vcpus} vCPUs")
    print(f"network download  {format_amount(network, found.network_download_bps)}")
    print(f"network upload    {format_amount(network, found.network_upload_bps)}")
    print(f"disk I/O          {format_amount(disk_io, found.disk_io_bps)}")
    print(f"disk I/O burst    {format_amount(disk_io, found.disk_io_burst_bps)} (not charged)")
    return EXIT_OK


def _defaults_from_database(settings: Settings, host: str | None, vcpus: int) -> BandwidthDefaults:
    from ledger.client import BandwidthDefaults
    from ledger.local import open_reader, target_host

    ledger = open_reader(settings)
    try:
        target = target_host(ledger, settings, host)
        values = ledger.default_bandwidth(target, vcpus, burst_multiplier=settings.disk_io_burst_multiplier)
    finally:
        ledger.close()
    return BandwidthDefaults.from_reply({"host": target, "vcpus": vcpus, **values})


def run_image_pull_check(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url:
        from ledger.cli.remote import via_service

        found = via_service(settings, lambda client: client.image_pull_check(host=args.host))
    else:
        found = _image_pull_check_from_database(settings, args.host)
    if args.json:
        print_json(asdict(found))
        return EXIT_OK
    print(
        f"an image pull fits on {found.host}: {format_bytes(found.disk_available)} of disk available, "
        f"images and OCI cache use {format_bytes(found.image_storage_bytes)} of at most "
        f"{format_bytes(found.max_image_storage_bytes)}"
    )
    return EXIT_OK


def _image_pull_check_from_database(settings: Settings, host: str | None) -> ImagePullCheck:
    from ledger.client import ImagePullCheck
    from ledger.local import open_reader, target_host

    ledger = open_reader(settings)
    try:
        target = target_host(ledger, settings, host)
        values = ledger.image_pull_check(target, settings.max_image_storage)
    finally:
        ledger.close()
    return ImagePullCheck.from_reply({"host": target, **values})
