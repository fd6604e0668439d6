"""Network capacity: the link speed of the default route's interface, or NETWORK_LIMIT.

The uplink is what VMs share, so the interface carrying the default route is the one measured. Virtual
NICs often cannot say their speed (virtio reports -1, veth a made-up 10000): an unknown speed yields an
`undetected` capacity with a hint naming the setting, never a silent 0.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ledger.core.resources import Capacity, Source
from ledger.discovery.sysfs import REAL_ROOT, is_real_root, read_text, under

ADVICE = "set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"
RTF_UP = 0x0001
# Older kernels print SPEED_UNKNOWN as an unsigned 32-bit -1.
SPEED_UNKNOWN_U32 = 0xFFFFFFFF


class RouteMessage(Protocol):
    """The part of a pyroute2 route message used here."""

    def get(self, key: str) -> Any: ...


def parse_proc_route(text: str) -> str | None:
    """The interface of the up IPv4 default route with the lowest metric in /proc/net/route text."""
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric, mask = fields[0], fields[1], fields[3], fields[6], fields[7]
        try:
            is_up = int(flags, 16) & RTF_UP
            is_default = int(destination, 16) == 0 and int(mask, 16) == 0
            rank = int(metric)
        except ValueError:
            continue
        if is_up and is_default and (best is None or rank < best[0]):
            best = (rank, iface)
    return best[1] if best else None


def lowest_metric_oif(routes: Iterable[RouteMessage]) -> int | None:
    """The output interface index of the default route with the lowest priority (metric)."""
    candidates = [
        (route.get("RTA_PRIORITY") or 0, oif) for route in routes if (oif := route.get("RTA_OIF")) is not None
    ]
    return min(candidates)[1] if candidates else None


def netlink_default_interface() -> str | None:
    """The default route's interface as the kernel reports it over netlink (IPv4 first, then IPv6)."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            oif = lowest_metric_oif(ipr.get_default_routes(family=family))
            if oif is not None:
                links = list(ipr.get_links(oif))
                name = links[0].get("IFLA_IFNAME") if links else None
                return str(name) if name else None
    return None


def default_interface(root: Path = REAL_ROOT) -> str | None:
    """The default route's interface: netlink on the real root, /proc/net/route elsewhere or as fallback."""
    if is_real_root(root):
        try:
            name = netlink_default_interface()
        except Exception:  # netlink unavailable (seccomp, no pyroute2): the proc file still works
            name = None
        if name:
            return name
    text = read_text(under(root, "/proc/net/route"))
    return parse_proc_route(text) if text else None


def link_speed(root: Path, iface: str) -> Capacity:
    """The interface's speed (Mbit/s in sysfs) as bytes/s, or `undetected` saying why."""
    path = under(root, f"/sys/class/net/{iface}/speed")
    text = read_text(path)
    if text is None:
        return Capacity(0, Source.UNDETECTED, f"cannot read the link speed of {iface} ({path}); {ADVICE}")
    try:
        mbits = int(text)
    except ValueError:
        return Capacity(0, Source.UNDETECTED, f"{iface} reports link speed {text!r}; {ADVICE}")
    if mbits <= 0 or mbits == SPEED_UNKNOWN_U32:
        return Capacity(
            0, Source.UNDETECTED, f"{iface} reports no link speed (virtio NICs report -1); {ADVICE}"
        )
    return Capacity(mbits * 1_000_000 // 8, Source.DETECTED)


def detect_network(root: Path = REAL_ROOT) -> Capacity:
    """Detected uplink bytes/s, or `undetected` with a hint when there is no default route or no speed."""
    iface = default_interface(root)
    if iface is None:
        return Capacity(0, Source.UNDETECTED, f"no default route, so no uplink to measure; {ADVICE}")
    return link_speed(root, iface)


def network_capacity(limit: int | None, root: Path = REAL_ROOT) -> Capacity:
    """The configured NETWORK_LIMIT if set, else the default route's link speed."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return detect_network(root)
