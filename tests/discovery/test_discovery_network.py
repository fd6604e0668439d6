"""Network reader: the default route's link speed; unknown speeds and missing routes say how to fix them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger.core.resources import Capacity, Source
from ledger.discovery.network import (
    default_interface,
    detect_network,
    link_speed,
    lowest_metric_oif,
    network_capacity,
    parse_proc_route,
)
from tests.hosttree import HostTree

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


class FakeRoute:
    """Stands in for a pyroute2 route message."""

    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def get(self, key: str) -> Any:
        return self.attrs.get(key)


def test_virtio_speed_of_minus_one_is_undetected_with_a_hint_naming_the_setting(host_tree: HostTree) -> None:
    capacity = detect_network(host_tree("h200-vm"))
    assert (capacity.capacity, capacity.source) == (0, Source.UNDETECTED)
    assert capacity.hint == (
        "eth0 reports no link speed (virtio NICs report -1); set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"
    )


def test_25_gbit_nic_on_the_lowest_metric_default_route_is_detected(host_tree: HostTree) -> None:
    root = host_tree("passthrough-host")
    assert default_interface(root) == "ens1f0np0"
    assert detect_network(root) == Capacity(25000 * 1_000_000 // 8, Source.DETECTED)
    assert detect_network(root).capacity == 3_125_000_000


def test_interface_folder_reached_through_a_sysfs_link_is_read(host_tree: HostTree) -> None:
    root = host_tree("passthrough-host")
    assert (root / "sys/class/net/ens1f0np0").is_symlink()
    assert link_speed(root, "ens1f0np0").capacity == 3_125_000_000


def test_no_default_route_is_undetected_not_a_crash(host_tree: HostTree) -> None:
    capacity = detect_network(host_tree("no-route-host"))
    assert (capacity.capacity, capacity.source) == (0, Source.UNDETECTED)
    assert capacity.hint is not None
    assert "no default route" in capacity.hint and "NETWORK_LIMIT" in capacity.hint


def test_missing_route_file_is_undetected(tmp_path: Path) -> None:
    assert detect_network(tmp_path).source is Source.UNDETECTED


def test_missing_speed_file_is_undetected_with_a_hint(host_tree: HostTree) -> None:
    capacity = link_speed(host_tree("passthrough-host"), "bond0")
    assert capacity.source is Source.UNDETECTED
    assert capacity.hint is not None and "bond0" in capacity.hint and "NETWORK_LIMIT" in capacity.hint


def test_garbage_speed_is_undetected(tmp_path: Path) -> None:
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "sys/class/net/eth0/speed").write_text("fast\n")
    assert link_speed(tmp_path, "eth0").source is Source.UNDETECTED


def test_unsigned_minus_one_speed_is_undetected(tmp_path: Path) -> None:
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "sys/class/net/eth0/speed").write_text("4294967295\n")
    assert link_speed(tmp_path, "eth0").source is Source.UNDETECTED


def test_configured_network_limit_wins_even_without_a_route(host_tree: HostTree) -> None:
    root = host_tree("no-route-host")
    assert network_capacity(1_250_000_000, root) == Capacity(1_250_000_000, Source.CONFIGURED)


def test_proc_route_ignores_down_and_non_default_routes() -> None:
    text = HEADER + (
        "eth1\t00000000\t01000A0A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"  # default but not up
        "eth2\t000A0A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # up but not default
        "eth3\t00000000\t01000A0A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    )
    assert parse_proc_route(text) == "eth3"


def test_proc_route_with_only_a_header_has_no_default() -> None:
    assert parse_proc_route(HEADER) is None


def test_netlink_routes_pick_the_lowest_priority_interface() -> None:
    routes = [FakeRoute(RTA_OIF=3, RTA_PRIORITY=200), FakeRoute(RTA_OIF=7, RTA_PRIORITY=100), FakeRoute()]
    assert lowest_metric_oif(routes) == 7
    assert lowest_metric_oif([]) is None


def test_real_host_network_never_crashes_and_never_reports_a_silent_zero() -> None:
    capacity = detect_network(Path("/"))
    if capacity.source is Source.DETECTED:
        assert capacity.capacity > 0
    else:
        assert capacity.hint is not None and "NETWORK_LIMIT" in capacity.hint
