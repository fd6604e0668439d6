"""What a VM really uses, as one host's sampler reports it: the `ledger.usage.<host>` message and its rules.

A report is one host's sample of its Running instances at one instant. Rates (`*_bps`, `cpu_vcpus`) are over
the interval since the sampler's previous look at the same process or device, so they are null on its first
look; cumulative counters (`*_total`) are always there. Bandwidths are bytes per second, like every
bandwidth in the ledger. Network is seen from the VM: `network_rx` is what the VM received (its TAP device
transmitted it), `network_tx` what it sent.

Usage is not accounting: a report that is malformed, late or impossible is dropped with a counted reason,
never applied, never blocking (`parse_report` and `check_instance` say why).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeGuard

from ledger.core import strict_json
from ledger.core.resources import HOST_ID_FORBIDDEN, ResourceType

MAX_REPORT_BYTES = 1024 * 1024  # NATS's default max payload: about 2,000 instances a host
MAX_REASON_CHARS = 200
CPU_OVER_CORES = 2.0  # a VM cannot use more than the host's cores; twice that is surely a broken figure

# The measures rolled up per hour (p50, p95, max): a report's rates, and two derived from them per sample
# the way allocations are charged: `network_bps` the larger direction (core.capacity.link_share) and
# `disk_io_bps` reads plus writes.
MEASURES: tuple[str, ...] = (
    "cpu_vcpus",
    "memory_rss_bytes",
    "disk_read_bps",
    "disk_write_bps",
    "network_rx_bps",
    "network_tx_bps",
    "network_bps",
    "disk_io_bps",
)
# The measure compared with each resource's allocation (disk space is not sampled).
RESOURCE_MEASURES: Mapping[ResourceType, str] = {
    ResourceType.CPU: "cpu_vcpus",
    ResourceType.MEMORY: "memory_rss_bytes",
    ResourceType.NETWORK: "network_bps",
    ResourceType.DISK_IO: "disk_io_bps",
}


class InvalidUsage(ValueError):
    """A usage report or one instance in it that cannot be used; `reason` is a short, countable cause."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class InstanceUsage:
    """One Running instance's figures: its hypervisor process tree and its TAP device."""

    id: str
    cpu_seconds_total: float
    memory_rss_bytes: int
    disk_read_bytes_total: int
    disk_write_bytes_total: int
    cpu_vcpus: float | None = None  # 1.0 = one core busy for the whole interval
    memory_pss_bytes: int | None = None  # where the kernel has smaps_rollup (cheap); else null
    memory_uss_bytes: int | None = None
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    network_rx_bytes_total: int | None = None  # null: the instance has no network (no TAP device)
    network_tx_bytes_total: int | None = None
    network_rx_bps: float | None = None
    network_tx_bps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def measures(self) -> dict[str, float | None]:
        """Each of MEASURES (None where the report had no figure for it)."""
        network = None
        if self.network_rx_bps is not None and self.network_tx_bps is not None:
            network = max(self.network_rx_bps, self.network_tx_bps)
        disk_io = None
        if self.disk_read_bps is not None and self.disk_write_bps is not None:
            disk_io = self.disk_read_bps + self.disk_write_bps
        return {
            "cpu_vcpus": self.cpu_vcpus,
            "memory_rss_bytes": float(self.memory_rss_bytes),
            "disk_read_bps": self.disk_read_bps,
            "disk_write_bps": self.disk_write_bps,
            "network_rx_bps": self.network_rx_bps,
            "network_tx_bps": self.network_tx_bps,
            "network_bps": network,
            "disk_io_bps": disk_io,
        }


@dataclass(frozen=True, slots=True)
class Unmeasured:
    """An instance the sampler could not measure, and why (its process is gone, its TAP device missing)."""

    id: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One host's sample: the `ledger.usage.<host>` message."""

    host: str
    at: datetime
    interval_s: float
    instances: tuple[InstanceUsage, ...] = ()
    unmeasured: tuple[Unmeasured, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "at": self.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "interval_s": self.interval_s,
            "instances": [i.to_dict() for i in self.instances],
            "unmeasured": [u.to_dict() for u in self.unmeasured],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


# ---- reading a report ---------------------------------------------------------------------------------

_HOST_ID_FORBIDDEN = re.compile(HOST_ID_FORBIDDEN)
_INT_FIELDS = {f.name for f in fields(InstanceUsage) if f.type in ("int", "int | None")}
_FLOAT_FIELDS = {f.name for f in fields(InstanceUsage) if f.type in ("float", "float | None")}
_REQUIRED = {f.name for f in fields(InstanceUsage) if f.type in ("int", "float", "str")}


def parse_report(data: bytes) -> UsageReport:
    """The report in `data`, or InvalidUsage: every number finite and not negative, no unknown field."""
    try:
        raw = strict_json.loads(data, max_bytes=MAX_REPORT_BYTES, name="usage report")
    except strict_json.InvalidJSON as exc:
        raise InvalidUsage("malformed", exc.message) from None
    if not isinstance(raw, dict):
        raise InvalidUsage("malformed", "a usage report is a JSON object")
    _only(raw, {"host", "at", "interval_s", "instances", "unmeasured"}, "report")
    host = raw.get("host")
    if not isinstance(host, str) or not host or len(host) > 255 or _HOST_ID_FORBIDDEN.search(host):
        raise InvalidUsage("malformed", "host must be a host id")
    interval = raw.get("interval_s")
    if not _number(interval) or interval <= 0:
        raise InvalidUsage("malformed", "interval_s must be a number of seconds greater than 0")
    instances = raw.get("instances", [])
    unmeasured = raw.get("unmeasured", [])
    if not isinstance(instances, list) or not isinstance(unmeasured, list):
        raise InvalidUsage("malformed", "instances and unmeasured must be lists")
    return UsageReport(
        host=host,
        at=_timestamp(raw.get("at")),
        interval_s=float(interval),
        instances=tuple(_instance(entry, i) for i, entry in enumerate(instances)),
        unmeasured=tuple(_unmeasured(entry, i) for i, entry in enumerate(unmeasured)),
    )


def check_instance(usage: InstanceUsage, host_cores: int) -> None:
    """InvalidUsage("impossible", ...) for figures no VM on this host can have."""
    if usage.cpu_vcpus is not None and host_cores > 0 and usage.cpu_vcpus > host_cores * CPU_OVER_CORES:
        raise InvalidUsage(
            "impossible",
            f"instance {usage.id!r} uses {usage.cpu_vcpus:g} vCPUs on a host of {host_cores} cores",
        )


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _only(raw: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidUsage("malformed", f"unknown field(s) in {what}: {', '.join(unknown)}")


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidUsage("malformed", "at must be an ISO 8601 timestamp")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidUsage("malformed", f"at is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if at.tzinfo is None:
        raise InvalidUsage("malformed", "at must carry a time zone (e.g. a trailing Z)")
    return at.astimezone(UTC)


def _instance_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidUsage("malformed", f"{where}.id must be a string of 1 to 255 characters")
    return value


def _instance(entry: Any, index: int) -> InstanceUsage:
    where = f"instances[{index}]"
    if not isinstance(entry, dict):
        raise InvalidUsage("malformed", f"{where} must be an object")
    _only(entry, {"id"} | _INT_FIELDS | _FLOAT_FIELDS, where)
    values: dict[str, Any] = {"id": _instance_id(entry.get("id"), where)}
    for name in _INT_FIELDS | _FLOAT_FIELDS:
        value = entry.get(name)
        if value is None:
            if name in _REQUIRED:
                raise InvalidUsage("malformed", f"{where}.{name} is required")
            continue
        if not _number(value) or (name in _INT_FIELDS and not isinstance(value, int)):
            kind = "a whole number" if name in _INT_FIELDS else "a number"
            raise InvalidUsage("malformed", f"{where}.{name} must be {kind}")
        if value < 0:
            raise InvalidUsage("impossible", f"{where}.{name} is negative ({value})")
        values[name] = float(value) if name in _FLOAT_FIELDS else value
    return InstanceUsage(**values)


def _unmeasured(entry: Any, index: int) -> Unmeasured:
    where = f"unmeasured[{index}]"
    if not isinstance(entry, dict):
        raise InvalidUsage("malformed", f"{where} must be an object")
    _only(entry, {"id", "reason"}, where)
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason:
        raise InvalidUsage("malformed", f"{where}.reason must be a non-empty string")
    return Unmeasured(_instance_id(entry.get("id"), where), reason[:MAX_REASON_CHARS])


# ---- summarising a series -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between closest ranks, as PostgreSQL's
    percentile_cont and numpy's default compute it; ValueError for an empty series."""
    if not values:
        raise ValueError("percentile of an empty series")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """An hour of one measure: the median, the 95th percentile and the peak."""

    p50: float
    p95: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    return Summary(percentile(values, 50), percentile(values, 95), max(values))
