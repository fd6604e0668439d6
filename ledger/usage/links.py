"""Every network device's byte counters in one netlink dump (pyroute2): one call per interval, not per VM."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """A device's cumulative counters, from the host's side of the link."""

    rx_bytes: int
    tx_bytes: int


def read_links(netns: str | None = None) -> dict[str, LinkCounters]:
    """Counters of every device in this network namespace (or the named one), by device name."""
    from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped]

    found: dict[str, LinkCounters] = {}
    with IPRoute() if netns is None else NetNS(netns) as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
            if name and stats is not None:
                found[str(name)] = LinkCounters(int(stats["rx_bytes"]), int(stats["tx_bytes"]))
    return found
