"""What a request asks and what a grant is charged: the seed's ValidateAllocation parameters, and the
default bandwidth an unstated amount takes (its vCPU share of the host's capacity)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ledger.core.capacity import check_amount, describe_value, link_share, proportional_share
from ledger.core.errors import InvalidRequest
from ledger.core.host import CPU, DISK_IO, NETWORK, HostState

BANDWIDTH_FIELDS: Final = ("network_download_bps", "network_upload_bps", "disk_io_bps")


@dataclass(frozen=True, slots=True)
class AllocationRequest:
    """What one instance asks of a host (the seed's ValidateAllocation parameters, plus disk bytes).

    A bandwidth left as None was not stated: it is charged the default (`DefaultBandwidth`); 0 is charged
    as 0.
    """

    vcpus: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    network_download_bps: int | None = None
    network_upload_bps: int | None = None
    disk_io_bps: int | None = None
    needs_gpu: bool = False
    gpu_profile: str | None = None

    def __post_init__(self) -> None:
        check_amount("vcpus", self.vcpus)
        check_amount("memory_bytes", self.memory_bytes)
        check_amount("disk_bytes", self.disk_bytes)
        for name in BANDWIDTH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                check_amount(name, value)
        if not isinstance(self.needs_gpu, bool):
            raise InvalidRequest(
                f"needs_gpu must be true or false, got {describe_value(self.needs_gpu)}", field="needs_gpu"
            )
        if self.gpu_profile is not None and not isinstance(self.gpu_profile, str):
            raise InvalidRequest("gpu_profile must be a string", field="gpu_profile")

    @property
    def wants_gpu(self) -> bool:
        return self.needs_gpu or bool(self.gpu_profile)


@dataclass(frozen=True, slots=True)
class Ask:
    """One request of a group: the amounts, the idempotency key a retry repeats, the hold's TTL."""

    request: AllocationRequest
    key: str | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class DefaultBandwidth:
    """What an unstated bandwidth is charged: the instance's share of host vCPUs times the capacity
    (`vcpus × capacity ÷ cpu_capacity`), times the ratio only under the seed's old rule; 0 when off."""

    enabled: bool = True
    uses_ratio: bool = False

    def share(self, host: HostState, vcpus: int, resource: int) -> int:
        """The default for one resource (NETWORK: each direction; DISK_IO: the sustained rate)."""
        if not self.enabled:
            return 0
        limit = host.limits[resource]
        ratio = limit.ratio if self.uses_ratio else 1.0
        return proportional_share(vcpus, host.limits[CPU].capacity, limit.capacity, ratio)

    def fill(
        self,
        host: HostState,
        vcpus: int,
        download: int | None,
        upload: int | None,
        disk_io: int | None,
    ) -> tuple[int, int, int, tuple[str, ...]]:
        """The bandwidths to charge, and the names of those that took the default."""
        if download is not None and upload is not None and disk_io is not None:
            return download, upload, disk_io, ()
        defaulted = []
        if download is None or upload is None:
            network = self.share(host, vcpus, NETWORK)
            if download is None:
                download = network
                defaulted.append("network_download_bps")
            if upload is None:
                upload = network
                defaulted.append("network_upload_bps")
        if disk_io is None:
            disk_io = self.share(host, vcpus, DISK_IO)
            defaulted.append("disk_io_bps")
        return download, upload, disk_io, tuple(defaulted)


@dataclass(frozen=True, slots=True)
class Charge:
    """What a grant takes of a host: every amount as charged (defaults filled in) and its GPU slot."""

    vcpus: int
    memory_bytes: int
    disk_bytes: int
    network_download_bps: int
    network_upload_bps: int
    disk_io_bps: int
    gpu: int  # slots: 0 or 1
    gpu_profile: str | None
    defaulted: tuple[str, ...] = ()  # the bandwidths the request left unstated, charged the default

    @property
    def network_bps(self) -> int:
        return link_share(self.network_download_bps, self.network_upload_bps)

    def amounts(self) -> tuple[int, int, int, int, int]:
        """What each resource is charged, in RESOURCES order."""
        return self.vcpus, self.memory_bytes, self.disk_bytes, self.network_bps, self.disk_io_bps

    def to_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus,
            "memory_bytes": self.memory_bytes,
            "disk_bytes": self.disk_bytes,
            "network_download_bps": self.network_download_bps,
            "network_upload_bps": self.network_upload_bps,
            "disk_io_bps": self.disk_io_bps,
            "gpu": self.gpu,
        }


def charge(request: AllocationRequest, host: HostState, defaults: DefaultBandwidth) -> Charge:
    """`request` as charged on `host`: unstated bandwidths take the default."""
    download, upload, disk_io, defaulted = defaults.fill(
        host, request.vcpus, request.network_download_bps, request.network_upload_bps, request.disk_io_bps
    )
    return Charge(
        request.vcpus,
        request.memory_bytes,
        request.disk_bytes,
        download,
        upload,
        disk_io,
        1 if request.wants_gpu else 0,
        request.gpu_profile,
        defaulted,
    )
