"""GPU reader: vGPU slots from SR-IOV VFs with mdev types, else whole-GPU passthrough, else None."""

from __future__ import annotations

import shutil
from pathlib import Path

from ledger.core.gpu import PASSTHROUGH, VGPU, GPUProfile, GPUStatus, PassthroughDevice
from ledger.discovery.gpu import detect_gpu, device_name, framebuffer_mb, vf_in_use
from tests.hosttree import HostTree

VGPU_DEVICES = "sys/bus/pci/devices"
MDEV_UUIDS = {
    "0000:41:00.4": "5b0a2e6c-8f3d-4c1e-9a7b-2d4f6e8a0c11",
    "0000:41:00.5": "c3d9f1a2-7e54-4b6a-8d21-0f9e3b5c7a42",
}


def test_vgpu_host_counts_vfs_as_slots_and_vfs_with_an_mdev_as_used(host_tree: HostTree) -> None:
    status = detect_gpu(host_tree("vgpu-host"))
    assert status == GPUStatus(
        mode=VGPU,
        total_slots=4,
        used_slots=2,
        profiles=(
            GPUProfile("NVIDIA H100-20C", "nvidia-1061", 20480, 2),
            GPUProfile("NVIDIA H100-40C", "nvidia-1062", 40960, 2),
        ),
    )


def test_vf_with_only_a_type_devices_entry_counts_as_used(host_tree: HostTree) -> None:
    root = host_tree("vgpu-host")
    for vf, uuid in MDEV_UUIDS.items():
        shutil.rmtree(root / VGPU_DEVICES / vf / uuid)
    assert all(vf_in_use(root / VGPU_DEVICES / vf) for vf in MDEV_UUIDS)
    status = detect_gpu(root)
    assert status is not None and status.used_slots == 2


def test_vf_without_any_mdev_is_free(host_tree: HostTree) -> None:
    assert not vf_in_use(host_tree("vgpu-host") / VGPU_DEVICES / "0000:41:00.6")


def test_vfs_found_through_physfn_when_the_pf_has_no_virtfn_links(host_tree: HostTree) -> None:
    root = host_tree("vgpu-host")
    for link in (root / VGPU_DEVICES / "0000:41:00.0").glob("virtfn*"):
        link.unlink()
    status = detect_gpu(root)
    assert status is not None and (status.mode, status.total_slots, status.used_slots) == (VGPU, 4, 2)


def test_vfs_without_mdev_types_fall_back_to_passthrough_of_the_physical_gpu(host_tree: HostTree) -> None:
    root = host_tree("vgpu-host")
    for vf in ("0000:41:00.4", "0000:41:00.5", "0000:41:00.6", "0000:41:00.7"):
        shutil.rmtree(root / VGPU_DEVICES / vf / "mdev_supported_types")
    status = detect_gpu(root)
    assert status is not None
    assert (status.mode, status.total_slots) == (PASSTHROUGH, 1)
    assert [d.pci_address for d in status.devices] == ["0000:41:00.0"]


def test_passthrough_gpu_on_vfio_is_used_and_its_audio_function_is_not_a_slot(host_tree: HostTree) -> None:
    status = detect_gpu(host_tree("passthrough-host"))
    assert status == GPUStatus(
        mode=PASSTHROUGH,
        total_slots=2,
        used_slots=1,
        devices=(
            PassthroughDevice("0000:17:00.0", "0x10de", "0x2230", "RTX A6000", "vfio-pci", available=False),
            PassthroughDevice("0000:65:00.0", "0x10de", "0x20b5", "A100 80GB PCIe", "nvidia", available=True),
        ),
    )


def test_h200_vm_has_one_available_passthrough_h200(host_tree: HostTree) -> None:
    status = detect_gpu(host_tree("h200-vm"))
    assert status is not None
    assert (status.mode, status.total_slots, status.used_slots) == (PASSTHROUGH, 1, 0)
    (device,) = status.devices
    assert (device.name, device.driver, device.available, device.pci_address) == (
        "H200",
        "nvidia",
        True,
        "0000:00:06.0",
    )


def test_host_without_an_nvidia_gpu_has_no_gpu_status(host_tree: HostTree) -> None:
    assert detect_gpu(host_tree("cpu-vm")) is None


def test_host_without_a_pci_bus_has_no_gpu_status(tmp_path: Path) -> None:
    assert detect_gpu(tmp_path) is None


def test_unknown_device_ids_get_a_generic_name() -> None:
    assert device_name(0x2335) == "H200"
    assert device_name(0x1234) == "NVIDIA GPU 0x1234"


def test_framebuffer_comes_from_the_description_else_the_profile_name() -> None:
    assert framebuffer_mb("num_heads=4, frl_config=60, framebuffer=20480M, max_instance=4", "x") == 20480
    assert framebuffer_mb("framebuffer=8G", "x") == 8192
    assert framebuffer_mb("", "NVIDIA A100-1-5C") == 5120
    assert framebuffer_mb("", "mystery") == 0


def test_gpu_status_survives_a_dict_round_trip(host_tree: HostTree) -> None:
    for name in ("vgpu-host", "passthrough-host"):
        status = detect_gpu(host_tree(name))
        assert status is not None
        assert GPUStatus.from_dict(status.to_dict()) == status
