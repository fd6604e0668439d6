"""PCI functions as sysfs shows them under /sys/bus/pci/devices, read once into plain values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.discovery.sysfs import link_name, read_int, under

DEVICES = "/sys/bus/pci/devices"


@dataclass(frozen=True, slots=True)
class PciFunction:
    """One PCI function: its address, ids, class, bound driver, and where its sysfs folder is."""

    address: str
    path: Path
    vendor: int
    device: int
    pci_class: int  # 24 bits: base class, subclass, programming interface (0x030200 = 3D controller)
    driver: str | None
    physfn: str | None  # the physical function's address when this is an SR-IOV virtual function

    @property
    def base_class(self) -> int:
        """The top byte of the class: 0x03 display, 0x04 multimedia (a GPU's HDMI audio), 0x02 network."""
        return self.pci_class >> 16

    @property
    def is_virtual_function(self) -> bool:
        return self.physfn is not None


def read_function(path: Path) -> PciFunction | None:
    """The function in sysfs folder `path`, or None when its ids cannot be read (it may have vanished)."""
    vendor = read_int(path / "vendor", 16)
    device = read_int(path / "device", 16)
    pci_class = read_int(path / "class", 16)
    if vendor is None or device is None or pci_class is None:
        return None
    return PciFunction(
        address=path.name,
        path=path,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        driver=link_name(path / "driver"),
        physfn=link_name(path / "physfn"),
    )


def list_functions(root: Path) -> list[PciFunction] | None:
    """Every readable PCI function sorted by address, or None when the host has no /sys/bus/pci."""
    devices = under(root, DEVICES)
    try:
        entries = sorted(devices.iterdir())
    except OSError:
        return None
    return [f for f in (read_function(entry) for entry in entries) if f is not None]


def virtual_function_addresses(function: PciFunction, all_functions: list[PciFunction]) -> list[str]:
    """Addresses of `function`'s SR-IOV VFs: its `virtfnN` links, else functions whose `physfn` names it."""
    links = sorted(function.path.glob("virtfn*"), key=lambda p: _virtfn_index(p.name))
    names = [name for name in (link_name(link) for link in links) if name]
    if names:
        return names
    return [f.address for f in all_functions if f.physfn == function.address]


def _virtfn_index(name: str) -> int:
    digits = name.removeprefix("virtfn")
    return int(digits) if digits.isdigit() else 0
