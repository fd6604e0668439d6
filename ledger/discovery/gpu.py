"""NVIDIA GPUs from /sys/bus/pci: vGPU slots (SR-IOV VFs offering mdev types) or whole-GPU passthrough.

Only display-class functions (0x03xxxx) count: a GPU's HDMI/DP audio function (0x0403xx) shares its
card but is not a slot, even when bound to vfio-pci alongside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ledger.core.gpu import PASSTHROUGH, VGPU, GPUProfile, GPUStatus, PassthroughDevice
from ledger.discovery.pci import PciFunction, list_functions, virtual_function_addresses
from ledger.discovery.sysfs import REAL_ROOT, read_int, read_text

NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = 0x03
VFIO_DRIVER = "vfio-pci"
MDEV_TYPES = "mdev_supported_types"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
FRAMEBUFFER_RE = re.compile(r"framebuffer=(\d+)([MG])", re.IGNORECASE)
# "NVIDIA H100-20C", "GRID A100-4C", "NVIDIA A100-1-5C" (MIG-backed): the last number is the GiB of memory.
NAME_GB_RE = re.compile(r"-(\d+)[A-Z]*$", re.IGNORECASE)

# PCI device ids of common data-centre GPUs (from the PCI ID database); anything else gets a generic name.
KNOWN_DEVICES: dict[int, str] = {
    0x2335: "H200",
    0x2330: "H100 SXM5 80GB",
    0x2331: "H100 PCIe",
    0x2321: "H100 NVL",
    0x20B0: "A100 SXM4 40GB",
    0x20B2: "A100 SXM4 80GB",
    0x20B5: "A100 80GB PCIe",
    0x20F1: "A100 PCIe 40GB",
    0x20B7: "A30",
    0x2236: "A10",
    0x26B5: "L40",
    0x26B9: "L40S",
    0x27B8: "L4",
    0x1EB8: "T4",
    0x2230: "RTX A6000",
}


@dataclass(frozen=True, slots=True)
class MdevType:
    """One mdev type as one VF offers it."""

    type_id: str
    name: str
    framebuffer_mb: int
    available: int


def device_name(device_id: int) -> str:
    """A readable model name for an NVIDIA device id."""
    return KNOWN_DEVICES.get(device_id, f"NVIDIA GPU 0x{device_id:04x}")


def is_nvidia_gpu(function: PciFunction) -> bool:
    return function.vendor == NVIDIA_VENDOR and function.base_class == DISPLAY_CLASS


def framebuffer_mb(description: str, name: str) -> int:
    """Framebuffer MiB from an mdev `description` ("framebuffer=20480M"), else from the profile name."""
    match = FRAMEBUFFER_RE.search(description)
    if match:
        amount = int(match[1])
        return amount * 1024 if match[2].upper() == "G" else amount
    by_name = NAME_GB_RE.search(name.strip())
    return int(by_name[1]) * 1024 if by_name else 0


def read_mdev_types(vf: Path) -> list[MdevType]:
    """The mdev types a VF offers: `mdev_supported_types/<type>/{name,available_instances,description}`."""
    try:
        folders = sorted(p for p in (vf / MDEV_TYPES).iterdir() if p.is_dir())
    except OSError:
        return []
    types = []
    for folder in folders:
        name = read_text(folder / "name") or folder.name
        description = read_text(folder / "description") or ""
        available = read_int(folder / "available_instances") or 0
        types.append(MdevType(folder.name, name, framebuffer_mb(description, name), max(0, available)))
    return types


def vf_in_use(vf: Path) -> bool:
    """Whether an mdev exists on the VF: a UUID-named child device, or an entry in a type's `devices/`."""
    try:
        if any(UUID_RE.match(child.name) for child in vf.iterdir()):
            return True
    except OSError:
        return False
    return any(True for _ in vf.glob(f"{MDEV_TYPES}/*/devices/*"))


def vgpu_status(devices_dir: Path, vf_addresses: list[str]) -> GPUStatus:
    """Slots are VFs; used are VFs holding an mdev; profiles merge each type's free instances across VFs."""
    merged: dict[str, GPUProfile] = {}
    used = 0
    for address in vf_addresses:
        vf = devices_dir / address
        used += vf_in_use(vf)
        for mdev in read_mdev_types(vf):
            known = merged.get(mdev.type_id)
            available = mdev.available + (known.available if known else 0)
            merged[mdev.type_id] = GPUProfile(mdev.name, mdev.type_id, mdev.framebuffer_mb, available)
    profiles = tuple(merged[key] for key in sorted(merged))
    return GPUStatus(mode=VGPU, total_slots=len(vf_addresses), used_slots=used, profiles=profiles)


def passthrough_device(function: PciFunction) -> PassthroughDevice:
    """A whole GPU; bound to vfio-pci means it is handed to a VM and no longer available."""
    return PassthroughDevice(
        pci_address=function.address,
        vendor_id=f"0x{function.vendor:04x}",
        device_id=f"0x{function.device:04x}",
        name=device_name(function.device),
        driver=function.driver,
        available=function.driver != VFIO_DRIVER,
    )


def passthrough_status(gpus: list[PciFunction]) -> GPUStatus:
    devices = tuple(passthrough_device(gpu) for gpu in gpus)
    used = sum(1 for device in devices if not device.available)
    return GPUStatus(mode=PASSTHROUGH, total_slots=len(devices), used_slots=used, devices=devices)


def vgpu_vfs(gpus: list[PciFunction], functions: list[PciFunction], devices_dir: Path) -> list[str]:
    """VFs (of all physical GPUs) that offer at least one mdev type: the vGPU slots."""
    return [
        address
        for gpu in gpus
        for address in virtual_function_addresses(gpu, functions)
        if read_mdev_types(devices_dir / address)
    ]


def detect_gpu(root: Path = REAL_ROOT) -> GPUStatus | None:
    """vGPU status if any physical NVIDIA GPU has VFs offering mdev types, else passthrough, else None."""
    functions = list_functions(root)
    if not functions:
        return None
    candidates = [f for f in functions if is_nvidia_gpu(f) and not f.is_virtual_function]
    # A VF whose `physfn` link is missing is still some GPU's VF if that GPU's `virtfnN` names it.
    vf_addresses = {a for gpu in candidates for a in virtual_function_addresses(gpu, functions)}
    gpus = [gpu for gpu in candidates if gpu.address not in vf_addresses]
    if not gpus:
        return None
    devices_dir = gpus[0].path.parent
    vfs = vgpu_vfs(gpus, functions, devices_dir)
    return vgpu_status(devices_dir, vfs) if vfs else passthrough_status(gpus)
