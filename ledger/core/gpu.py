"""GPU status in the seed's GPUResourceStatus shape: vGPU profiles or passthrough devices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VGPU = "vgpu"
PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class GPUProfile:
    """A vGPU (mdev) type offered by the host's virtual functions."""

    name: str  # e.g. "NVIDIA H100-20C"
    type_id: str  # the mdev type directory, e.g. "nvidia-1061"
    framebuffer_mb: int
    available: int  # instances of this profile that can still be created

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type_id": self.type_id,
            "framebuffer_mb": self.framebuffer_mb,
            "available": self.available,
        }


@dataclass(frozen=True, slots=True)
class PassthroughDevice:
    """A whole physical GPU that can be handed to one VM."""

    pci_address: str
    vendor_id: str
    device_id: str
    name: str
    driver: str | None
    available: bool  # False once bound to vfio-pci, i.e. handed to a VM

    def to_dict(self) -> dict[str, Any]:
        return {
            "pci_address": self.pci_address,
            "vendor_id": self.vendor_id,
            "device_id": self.device_id,
            "name": self.name,
            "driver": self.driver,
            "available": self.available,
        }


@dataclass(frozen=True, slots=True)
class GPUStatus:
    """The seed's GPUResourceStatus: slots are VFs in vGPU mode, physical GPUs in passthrough mode."""

    mode: str
    total_slots: int
    used_slots: int
    profiles: tuple[GPUProfile, ...] = field(default_factory=tuple)
    devices: tuple[PassthroughDevice, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.mode,
            "total_slots": self.total_slots,
            "used_slots": self.used_slots,
        }
        if self.profiles:
            data["profiles"] = [p.to_dict() for p in self.profiles]
        if self.devices:
            data["devices"] = [d.to_dict() for d in self.devices]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPUStatus:
        return cls(
            mode=str(data["mode"]),
            total_slots=int(data["total_slots"]),
            used_slots=int(data["used_slots"]),
            profiles=tuple(GPUProfile(**p) for p in data.get("profiles", [])),
            devices=tuple(PassthroughDevice(**d) for d in data.get("devices", [])),
        )
