"""discover(): every resource in one record, configured limits first, on fixture trees and this host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ledger.config import Settings
from ledger.core.gpu import PASSTHROUGH
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.discovery import DEFAULT_DISK_IO, HostCapacities, discover
from tests.hosttree import HostTree

MakeSettings = Callable[..., Settings]


def test_h200_vm_matches_what_its_tools_reported(host_tree: HostTree, make_settings: MakeSettings) -> None:
    found = discover(make_settings(), root=host_tree("h200-vm"))
    assert found.cpu == Capacity(16, Source.DETECTED)
    assert found.memory == Capacity(131981020 * 1024, Source.DETECTED)
    assert found.gpu is not None
    assert (found.gpu.mode, found.gpu.total_slots, found.gpu.used_slots) == (PASSTHROUGH, 1, 0)
    assert [(d.name, d.available) for d in found.gpu.devices] == [("H200", True)]
    assert found.network.source is Source.UNDETECTED
    assert found.network.capacity == 0
    assert found.network.hint is not None and "NETWORK_LIMIT" in found.network.hint


def test_cpu_vm_has_two_cpus_and_no_gpu(host_tree: HostTree, make_settings: MakeSettings) -> None:
    found = discover(make_settings(), root=host_tree("cpu-vm"))
    assert found.cpu == Capacity(2, Source.DETECTED)
    assert found.gpu is None


def test_disk_io_defaults_to_one_gigabyte_per_second(
    host_tree: HostTree, make_settings: MakeSettings
) -> None:
    found = discover(make_settings(), root=host_tree("cpu-vm"))
    assert found.disk_io == Capacity(DEFAULT_DISK_IO, Source.DEFAULT)
    assert DEFAULT_DISK_IO == 1_000_000_000


def test_disk_is_measured_on_the_data_dir(host_tree: HostTree, make_settings: MakeSettings) -> None:
    settings = make_settings()
    found = discover(settings, root=host_tree("cpu-vm"))
    assert found.disk.source is Source.DETECTED and found.disk.capacity > 0
    assert settings.data_dir.is_dir()


def test_every_configured_limit_wins_with_source_configured(
    host_tree: HostTree, make_settings: MakeSettings
) -> None:
    settings = make_settings(
        CPU_LIMIT="48",
        MEMORY_LIMIT="256GiB",
        DISK_LIMIT="2TB",
        NETWORK_LIMIT="10Gbps",
        DISK_IO_LIMIT="2GB/s",
    )
    found = discover(settings, root=host_tree("h200-vm"))
    assert found.cpu == Capacity(48, Source.CONFIGURED)
    assert found.memory == Capacity(256 * 2**30, Source.CONFIGURED)
    assert found.disk == Capacity(2 * 10**12, Source.CONFIGURED)
    assert found.network == Capacity(1_250_000_000, Source.CONFIGURED)
    assert found.disk_io == Capacity(2 * 10**9, Source.CONFIGURED)


def test_get_returns_each_resource_by_type(host_tree: HostTree, make_settings: MakeSettings) -> None:
    found = discover(make_settings(), root=host_tree("cpu-vm"))
    assert found.get(ResourceType.CPU) is found.cpu
    assert found.get(ResourceType.DISK_IO) is found.disk_io


def test_to_dict_has_capacity_source_and_hint_only_when_set(
    host_tree: HostTree, make_settings: MakeSettings
) -> None:
    data = discover(make_settings(), root=host_tree("h200-vm")).to_dict()
    assert list(data) == ["cpu", "memory", "disk", "network", "disk_io", "gpu"]
    assert data["cpu"] == {"capacity": 16, "source": "detected"}
    assert data["network"]["source"] == "undetected" and "NETWORK_LIMIT" in data["network"]["hint"]
    assert data["disk_io"] == {"capacity": 1_000_000_000, "source": "default"}
    assert data["gpu"]["mode"] == "passthrough" and data["gpu"]["devices"][0]["name"] == "H200"


def test_to_dict_gpu_is_none_without_a_gpu(host_tree: HostTree, make_settings: MakeSettings) -> None:
    assert discover(make_settings(), root=host_tree("cpu-vm")).to_dict()["gpu"] is None


def test_discover_runs_on_this_machine(make_settings: MakeSettings) -> None:
    found = discover(make_settings(), root=Path("/"))
    assert isinstance(found, HostCapacities)
    for resource in ResourceType:
        capacity = found.get(resource)
        assert capacity.capacity > 0 or (capacity.source is Source.UNDETECTED and capacity.hint)
