"""The entity records the orchestrator reports (full current state, never a delta), parsed strictly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

from ledger.core.capacity import check_amount
from ledger.core.errors import InvalidRequest
from ledger.core.resources import is_active
from ledger.core.units import MAX_AMOUNT

MAX_ID_LENGTH = 255
MAX_PID = 2**31 - 1  # what a process id column holds (Linux allows at most 2^22)
MAX_INTERFACE_NAME = 15  # Linux IFNAMSIZ, less its NUL


def _field_error(kind: str, name: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{kind}.{name} {problem}", field=name)


def _amount(kind: str, name: str, value: Any) -> int:
    return check_amount(name, value, label=f"{kind}.{name}")


def _text(kind: str, name: str, value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise _field_error(kind, name, "is required")
        return None
    if not isinstance(value, str):
        raise _field_error(kind, name, f"must be a string, got {type(value).__name__}")
    if required and not value:
        raise _field_error(kind, name, "cannot be empty")
    if len(value) > MAX_ID_LENGTH:
        raise _field_error(kind, name, f"is longer than {MAX_ID_LENGTH} characters")
    return value


class _Record:
    """Strict parsing shared by every record: unknown fields are errors, missing amounts are 0 (or None for
    the OPTIONAL_AMOUNTS, whose absence means "not stated")."""

    KIND = "record"
    REQUIRED_TEXT: frozenset[str] = frozenset()
    OPTIONAL_TEXT: frozenset[str] = frozenset()
    OPTIONAL_AMOUNTS: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{cls.KIND} record must be a JSON object", field="data")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidRequest(
                f"{cls.KIND} record has unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(names))}",
                field=unknown[0],
            )
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = data.get(f.name)
            if f.name in cls.REQUIRED_TEXT:
                values[f.name] = _text(cls.KIND, f.name, raw, required=True)
            elif f.name in cls.OPTIONAL_TEXT:
                values[f.name] = _text(cls.KIND, f.name, raw, required=False)
            elif raw is None and f.name in cls.OPTIONAL_AMOUNTS:
                values[f.name] = None
            else:
                values[f.name] = _amount(cls.KIND, f.name, 0 if raw is None else raw)
        return cls(**values)

    def __post_init__(self) -> None:
        # Records built in code (not parsed) get the same amount checks as parsed ones.
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in self.REQUIRED_TEXT or f.name in self.OPTIONAL_TEXT:
                continue
            value = getattr(self, f.name)
            if value is not None or f.name not in self.OPTIONAL_AMOUNTS:
                _amount(self.KIND, f.name, value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class InstanceRecord(_Record):
    """The seed's InstanceAllocation in snake_case, plus the GPU it holds and the reservation it consumes.

    A bandwidth left out (None) is charged the default (`core.charges.DefaultBandwidth`); `gpu` names the
    GPU (profile or device) the instance holds, and an empty name means none. `hypervisor_pid` and
    `tap_device` are the seed's InstanceUtilizationInfo: where a sampler finds the VM on its host.
    """

    KIND = "instance"
    REQUIRED_TEXT = frozenset({"id", "state"})
    OPTIONAL_TEXT = frozenset({"name", "gpu", "reservation_id", "tap_device"})
    OPTIONAL_AMOUNTS = frozenset(
        {"network_download_bps", "network_upload_bps", "disk_io_bps", "hypervisor_pid"}
    )

    id: str
    state: str
    name: str | None = None
    vcpus: int = 0
    memory_bytes: int = 0  # size + hotplug size
    overlay_bytes: int = 0
    volume_overlay_bytes: int = 0
    volume_bytes: int = 0  # attached volumes' base size, for per-instance reporting only
    network_download_bps: int | None = None
    network_upload_bps: int | None = None
    disk_io_bps: int | None = None
    gpu: str | None = None
    reservation_id: str | None = None
    hypervisor_pid: int | None = None  # the VM's hypervisor process on its host
    tap_device: str | None = None  # its TAP device ("" or absent: no network)

    def __post_init__(self) -> None:
        _Record.__post_init__(self)
        if self.gpu == "":  # one meaning everywhere: no GPU
            object.__setattr__(self, "gpu", None)
        if self.tap_device == "":
            object.__setattr__(self, "tap_device", None)
        if self.hypervisor_pid is not None and not 0 < self.hypervisor_pid <= MAX_PID:
            raise InvalidRequest(
                f"instance.hypervisor_pid must be a process id from 1 to {MAX_PID}, "
                f"got {self.hypervisor_pid}",
                field="hypervisor_pid",
            )
        if self.tap_device is not None and len(self.tap_device) > MAX_INTERFACE_NAME:
            raise InvalidRequest(
                f"instance.tap_device is longer than {MAX_INTERFACE_NAME} characters "
                "(a Linux interface name)",
                field="tap_device",
            )
        disk = self.overlay_bytes + self.volume_overlay_bytes + self.volume_bytes
        if disk > MAX_AMOUNT:  # the instance's disk in reports adds these up
            raise InvalidRequest(
                f"instance.overlay_bytes + volume_overlay_bytes + volume_bytes is {disk}, beyond the largest "
                f"amount the ledger holds ({MAX_AMOUNT})",
                field="overlay_bytes",
            )

    @property
    def active(self) -> bool:
        return is_active(self.state)

    @property
    def gpu_slots(self) -> int:
        """The GPU slots the instance holds while active."""
        return 1 if self.gpu else 0


@dataclass(frozen=True, slots=True)
class VolumeRecord(_Record):
    KIND = "volume"
    REQUIRED_TEXT = frozenset({"id"})
    OPTIONAL_TEXT = frozenset({"name", "attached_to"})

    id: str
    name: str | None = None
    size_bytes: int = 0
    attached_to: str | None = None


@dataclass(frozen=True, slots=True)
class ImageRecord(_Record):
    KIND = "image"
    REQUIRED_TEXT = frozenset({"id"})
    OPTIONAL_TEXT = frozenset({"name"})

    id: str
    name: str | None = None
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class OciCacheRecord(_Record):
    KIND = "oci_cache"

    total_bytes: int = 0
