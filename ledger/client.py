"""An asyncio client for orchestrators: the `ledger` service over NATS request-reply, plus event publishing.

    async with await LedgerClient.connect("nats://127.0.0.1:4222") as ledger:
        grant = await ledger.validate(vcpus=4, memory_bytes=8 * 2**30, idempotency_key="vm-42")
        placed = await ledger.place(vcpus=4, labels={"zone": "b"}, idempotency_key="vm-43")  # best host in b
        status = await ledger.status()  # a FullStatus: status.resources[ResourceType.CPU].available, ...
        ...
        await ledger.publish_event(make_event("instance.created", host, record, version=1))

Which NATS: `LedgerClient.connect()` with no URL takes `settings.nats_url` (LEDGER_NATS_URL, or
`--nats-url` for the CLI), and without one the URL that a `ledger serve` running on the same data dir wrote
to `<data dir>/serve.json` (`LEDGER_DATA_DIR`; that file's URL has any password masked, so credentials come
from the settings: LEDGER_NATS_USER/PASSWORD/TOKEN/CREDS). With neither it raises ConfigError.

Results are frozen dataclasses: `Reservation` (validate, place), `Candidates`, `FullStatus` and
`ResourceStatus` (status), `ReservationInfo` (release), `InstanceUtilizationInfo` (running_instances),
`BandwidthDefaults` and `ImagePullCheck`. Each mirrors the reply documented in docs/protocol.md; fields a
newer service adds are ignored. `call(endpoint, body)` sends any request and returns the reply as a dict.

Refusals and errors raise the typed errors of `ledger.core.errors` (InsufficientResources, InvalidRequest,
UnknownHost, Conflict, NotFound, Unavailable), each with `.code`, `.message` and `.details`; a timeout or no
service answering is `Unavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, overload
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck

from ledger.bus.connect import connect
from ledger.bus.jetstream import ensure_stream, stream_config
from ledger.bus.protocol import PREFIX
from ledger.bus.publisher import publish_event
from ledger.config import Settings, load_settings, mask_url
from ledger.core.capacity import ResourceStatus
from ledger.core.charges import Charge
from ledger.core.errors import (
    ConfigError,
    Conflict,
    InsufficientResources,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unavailable,
    UnknownHost,
)
from ledger.core.resources import ResourceType, Source
from ledger.core.results import (
    AllocationBreakdown,
    DiskBreakdown,
    FullStatus,
    InstanceUtilizationInfo,
    ReservationInfo,
)

ERRORS: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        InsufficientResources,
        InvalidRequest,
        UnknownHost,
        Conflict,
        NotFound,
        Unavailable,
        ConfigError,
    )
}


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted hold: pass `reservation_id` in the instance's record so the event consumes it."""

    reservation_id: str
    host: str
    status: str
    expires_at: datetime
    idempotency_key: str | None
    replayed: bool
    charged: dict[str, int]  # what the hold takes, bandwidth defaults filled in
    defaulted: tuple[str, ...]  # the bandwidths left unstated, charged the default


def _host_list(exclude_hosts: Sequence[str] | None) -> list[str] | None:
    """`exclude_hosts` as sent. One host id given alone is a mistake `list()` would turn into characters."""
    if isinstance(exclude_hosts, str):
        raise InvalidRequest(
            f"exclude_hosts must be a list of host ids: [{exclude_hosts!r}], not {exclude_hosts!r}",
            field="exclude_hosts",
        )
    return None if exclude_hosts is None else list(exclude_hosts)


def _reservation(reply: Mapping[str, Any]) -> Reservation:
    return Reservation(
        reservation_id=reply["reservation_id"],
        host=reply["host"],
        status=reply["status"],
        expires_at=datetime.fromisoformat(reply["expires_at"]),
        idempotency_key=reply.get("idempotency_key"),
        replayed=bool(reply.get("replayed")),
        charged=dict(reply.get("charged") or {}),
        defaulted=tuple(reply.get("defaulted") or ()),
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host the request fits on: what it has available per resource before placement, and its score (the
    fraction of its tightest resource left after placement)."""

    host: str
    available: dict[str, int]
    score: float


@dataclass(frozen=True, slots=True)
class Candidates:
    """The best hosts first; how many hosts were considered and fit; how many fell short on each resource,
    the GPU (`gpu`) or a requested label (`labels`)."""

    candidates: list[Candidate]
    considered: int
    fitting: int
    shortfalls: dict[str, int]


@dataclass(frozen=True, slots=True)
class BandwidthDefaults:
    """What an instance of `vcpus` that states no bandwidth is charged on `host` (bytes per second); the
    disk I/O burst is reported, not charged."""

    host: str
    vcpus: int
    network_download_bps: int
    network_upload_bps: int
    disk_io_bps: int
    disk_io_burst_bps: int

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> BandwidthDefaults:
        return cls(
            host=str(reply["host"]),
            vcpus=int(reply["vcpus"]),
            network_download_bps=int(reply["network_download_bps"]),
            network_upload_bps=int(reply["network_upload_bps"]),
            disk_io_bps=int(reply["disk_io_bps"]),
            disk_io_burst_bps=int(reply["disk_io_burst_bps"]),
        )


@dataclass(frozen=True, slots=True)
class ImagePullCheck:
    """An image pull fits on `host`: the disk left to promise, and the image storage (images plus OCI cache)
    against its cap (bytes)."""

    host: str
    disk_available: int
    image_storage_bytes: int
    max_image_storage_bytes: int

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> ImagePullCheck:
        return cls(
            host=str(reply["host"]),
            disk_available=int(reply["disk_available"]),
            image_storage_bytes=int(reply["image_storage_bytes"]),
            max_image_storage_bytes=int(reply["max_image_storage_bytes"]),
        )


def _resource_status(reply: Mapping[str, Any]) -> ResourceStatus:
    return ResourceStatus(
        type=ResourceType(reply["type"]),
        capacity=int(reply["capacity"]),
        effective_limit=int(reply["effective_limit"]),
        allocated=int(reply["allocated"]),
        pending=int(reply["pending"]),
        available=int(reply["available"]),
        oversub_ratio=float(reply["oversub_ratio"]),
        source=Source(reply["source"]),
        hint=reply.get("hint"),
        used=None if reply.get("used") is None else float(reply["used"]),
    )


def _allocation(item: Mapping[str, Any]) -> AllocationBreakdown:
    return AllocationBreakdown(
        instance_id=str(item["instance_id"]),
        instance_name=str(item["instance_name"]),
        state=str(item["state"]),
        cpu=int(item["cpu"]),
        memory_bytes=int(item["memory_bytes"]),
        disk_bytes=int(item["disk_bytes"]),
        network_download_bps=int(item["network_download_bps"]),
        network_upload_bps=int(item["network_upload_bps"]),
        disk_io_bps=int(item["disk_io_bps"]),
        gpu=item.get("gpu"),
    )


def _full_status(reply: Mapping[str, Any]) -> FullStatus:
    """The status reply as the FullStatus `Ledger.full_status` returns (its `to_dict()` is the reply)."""
    disk = reply["disk_breakdown"]
    allocations = [_allocation(item) for item in reply.get("allocations") or []]
    return FullStatus(
        host_id=str(reply["host"]),
        resources={r: _resource_status(reply[r.value]) for r in ResourceType},
        disk_breakdown=DiskBreakdown(
            images_bytes=int(disk["images_bytes"]),
            oci_cache_bytes=int(disk["oci_cache_bytes"]),
            volumes_bytes=int(disk["volumes_bytes"]),
            overlays_bytes=int(disk["overlays_bytes"]),
        ),
        gpu=dict(reply["gpu"]) if reply.get("gpu") is not None else None,
        allocations=allocations,
        allocations_total=int(reply.get("allocations_total", len(allocations))),
        allocations_next=reply.get("allocations_next"),
        labels=dict(reply.get("labels") or {}),
    )


def _reservation_info(reply: Mapping[str, Any]) -> ReservationInfo:
    ended = reply.get("ended_at")
    return ReservationInfo(
        reservation_id=str(reply["reservation_id"]),
        host_id=str(reply["host"]),
        status=str(reply["status"]),
        created_at=datetime.fromisoformat(reply["created_at"]),
        expires_at=datetime.fromisoformat(reply["expires_at"]),
        ended_at=datetime.fromisoformat(ended) if ended else None,
        instance_id=reply.get("instance_id"),
        idempotency_key=reply.get("idempotency_key"),
        charge=_charge(reply["charged"], reply.get("defaulted") or ()) if reply.get("charged") else None,
    )


def _charge(charged: Mapping[str, Any], defaulted: Sequence[str]) -> Charge:
    return Charge(
        vcpus=int(charged["vcpus"]),
        memory_bytes=int(charged["memory_bytes"]),
        disk_bytes=int(charged["disk_bytes"]),
        network_download_bps=int(charged["network_download_bps"]),
        network_upload_bps=int(charged["network_upload_bps"]),
        disk_io_bps=int(charged["disk_io_bps"]),
        gpu=int(charged["gpu"]),
        gpu_profile=None,
        defaulted=tuple(defaulted),
    )


def _utilization(item: Mapping[str, Any]) -> InstanceUtilizationInfo:
    pid = item.get("hypervisor_pid")
    return InstanceUtilizationInfo(
        id=str(item["id"]),
        name=str(item["name"]),
        hypervisor_pid=int(pid) if pid is not None else None,
        tap_device=str(item.get("tap_device") or ""),
        allocated_vcpus=int(item["allocated_vcpus"]),
        allocated_memory_bytes=int(item["allocated_memory_bytes"]),
    )


NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


def check_nats_url(url: str) -> str:
    """`url` (several, comma-separated) if each is a NATS server's URL, else ConfigError quoting it (password
    masked): a typo is the user's to fix, not an outage to wait out. A bare HOST:PORT means nats://."""
    for part in (p.strip() for p in url.split(",")):
        try:
            parsed = urlsplit(part if "://" in part else f"nats://{part}")
            valid = parsed.scheme in NATS_SCHEMES and bool(parsed.hostname) and parsed.port != 0
            valid = valid and not any(c.isspace() for c in parsed.netloc)
        except ValueError:  # a port that is not a number, an unclosed IPv6 bracket
            valid = False
        if not valid:
            raise ConfigError(
                f"invalid NATS URL {mask_url(part)!r}: expected nats://HOST[:PORT] (or tls://, ws://, "
                "wss://), several separated by commas",
                setting="nats_url",
            )
    return url


def nats_url_for(settings: Settings | None = None) -> str:
    """The NATS URL a client uses when none is given: the configured one, else that of a `ledger serve`
    running on the settings' data dir (its serve.json). ConfigError when there is neither, or it is not a
    NATS URL."""
    settings = settings or load_settings()
    if settings.nats_url:
        return check_nats_url(settings.nats_url)
    from ledger.serve import running_nats_url  # the service's module: only needed on this path

    found = running_nats_url(settings)
    if not found:
        raise ConfigError(
            f"no NATS URL: pass one, set LEDGER_NATS_URL, or start `ledger serve` on the data dir "
            f"{settings.data_dir} (it writes its URL to serve.json there)",
            setting="nats_url",
        )
    return found


def _error(reply: Mapping[str, Any]) -> LedgerError:
    details = {k: v for k, v in reply.items() if k not in {"ok", "code", "message"}}
    cls = ERRORS.get(str(reply.get("code")), LedgerError)
    error = cls(str(reply.get("message") or reply.get("code") or "request failed"), **details)
    return error


class LedgerClient:
    """Typed calls to the `ledger.v1.*` endpoints."""

    def __init__(self, nc: Client, *, timeout: float = 5.0, owns_connection: bool = False) -> None:
        self.nc = nc
        self.timeout = timeout
        self._owns = owns_connection
        self._stream_ready = False

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        settings: Settings | None = None,
        *,
        timeout: float = 5.0,
        reconnect_forever: bool = True,
    ) -> LedgerClient:
        """A client on its own connection (a one-shot caller passes reconnect_forever=False to fail fast).
        Without `url`, the one `nats_url_for(settings)` finds (settings from the environment when None)."""
        if url is None:
            settings = settings or load_settings()
            url = nats_url_for(settings)
        check_nats_url(url)
        nc = await connect(url, settings, name="ledger-client", reconnect_forever=reconnect_forever)
        return cls(nc, timeout=timeout, owns_connection=True)

    async def close(self) -> None:
        if self._owns:
            await self.nc.drain()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def call(self, endpoint: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One request; returns the reply (without `ok`) or raises the typed error it carries."""
        payload = json.dumps({k: v for k, v in (body or {}).items() if v is not None}).encode()
        try:
            msg = await self.nc.request(f"{PREFIX}.{endpoint}", payload, timeout=self.timeout)
        except NoRespondersError:
            raise Unavailable("no ledger service is answering on this NATS") from None
        except NatsTimeoutError:
            raise Unavailable(
                f"the ledger service did not answer {endpoint} within {self.timeout} s"
            ) from None
        except Exception as exc:
            raise Unavailable(f"cannot reach the ledger service: {exc or type(exc).__name__}") from None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            raise Unavailable(f"the ledger service sent a reply that is not JSON to {endpoint}") from None
        if not isinstance(reply, dict):
            raise Unavailable(f"the ledger service sent an unexpected reply to {endpoint}")
        if not reply.get("ok"):
            raise _error(reply)
        reply.pop("ok")
        return reply

    async def validate(
        self,
        *,
        vcpus: int,
        memory_bytes: int = 0,
        disk_bytes: int = 0,
        network_download_bps: int | None = None,
        network_upload_bps: int | None = None,
        disk_io_bps: int | None = None,
        needs_gpu: bool = False,
        gpu_profile: str | None = None,
        host: str | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: float | None = None,
    ) -> Reservation:
        """Check and reserve in one step; raises InsufficientResources naming what does not fit. A bandwidth
        left as None is charged the default (the instance's vCPU share of the host's capacity)."""
        reply = await self.call(
            "validate",
            {
                "host": host,
                "vcpus": vcpus,
                "memory_bytes": memory_bytes,
                "disk_bytes": disk_bytes,
                "network_download_bps": network_download_bps,
                "network_upload_bps": network_upload_bps,
                "disk_io_bps": disk_io_bps,
                "needs_gpu": needs_gpu,
                "gpu_profile": gpu_profile,
                "idempotency_key": idempotency_key,
                "ttl_seconds": ttl_seconds,
            },
        )
        return _reservation(reply)

    async def candidates(
        self,
        *,
        vcpus: int = 0,
        memory_bytes: int = 0,
        disk_bytes: int = 0,
        network_download_bps: int | None = None,
        network_upload_bps: int | None = None,
        disk_io_bps: int | None = None,
        needs_gpu: bool = False,
        gpu_profile: str | None = None,
        labels: Mapping[str, str] | None = None,
        exclude_hosts: Sequence[str] | None = None,
        policy: str | None = None,
        limit: int | None = None,
    ) -> Candidates:
        """The hosts the amounts fit on that carry every label in `labels`, best first for `policy` (`spread`,
        the default, or `pack`), at most `limit` (default 10); holds nothing. None fitting is not an error:
        `fitting` is 0 and `shortfalls` says why."""
        reply = await self.call(
            "candidates",
            {
                "vcpus": vcpus,
                "memory_bytes": memory_bytes,
                "disk_bytes": disk_bytes,
                "network_download_bps": network_download_bps,
                "network_upload_bps": network_upload_bps,
                "disk_io_bps": disk_io_bps,
                "needs_gpu": needs_gpu,
                "gpu_profile": gpu_profile,
                "labels": None if labels is None else dict(labels),
                "exclude_hosts": _host_list(exclude_hosts),
                "policy": policy,
                "limit": limit,
            },
        )
        return Candidates(
            candidates=[
                Candidate(c["host"], dict(c["available"]), float(c["score"])) for c in reply["candidates"]
            ],
            considered=int(reply["considered"]),
            fitting=int(reply["fitting"]),
            shortfalls=dict(reply["shortfalls"]),
        )

    async def place(
        self,
        *,
        vcpus: int = 0,
        memory_bytes: int = 0,
        disk_bytes: int = 0,
        network_download_bps: int | None = None,
        network_upload_bps: int | None = None,
        disk_io_bps: int | None = None,
        needs_gpu: bool = False,
        gpu_profile: str | None = None,
        labels: Mapping[str, str] | None = None,
        exclude_hosts: Sequence[str] | None = None,
        policy: str | None = None,
        attempts: int | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: float | None = None,
    ) -> Reservation:
        """`candidates` and `validate` in one step: hold on the best host (named in the grant's `host`). When
        no host fits, raises InsufficientResources whose details have `considered`, `fitting` and
        `shortfalls`. The idempotency key is unique across the fleet: a retry gets the same hold."""
        reply = await self.call(
            "place",
            {
                "vcpus": vcpus,
                "memory_bytes": memory_bytes,
                "disk_bytes": disk_bytes,
                "network_download_bps": network_download_bps,
                "network_upload_bps": network_upload_bps,
                "disk_io_bps": disk_io_bps,
                "needs_gpu": needs_gpu,
                "gpu_profile": gpu_profile,
                "labels": None if labels is None else dict(labels),
                "exclude_hosts": _host_list(exclude_hosts),
                "policy": policy,
                "attempts": attempts,
                "idempotency_key": idempotency_key,
                "ttl_seconds": ttl_seconds,
            },
        )
        return _reservation(reply)

    async def reservation(
        self,
        reservation_id: str | None = None,
        *,
        host: str | None = None,
        idempotency_key: str | None = None,
    ) -> ReservationInfo:
        """A reservation as it is now, by id, or by the idempotency key it was made with on `host` (default:
        the answering service's host). NotFound when there is none."""
        body = {"reservation_id": reservation_id, "host": host, "idempotency_key": idempotency_key}
        return _reservation_info(await self.call("reservation", body))

    async def release(self, reservation_id: str) -> ReservationInfo:
        """Give a held reservation back; one that already ended is left alone, and `status` says how it
        ended (`released`, `consumed` or `expired`). NotFound for an id the ledger never issued."""
        return _reservation_info(await self.call("release", {"reservation_id": reservation_id}))

    @overload
    async def status(
        self,
        host: str | None = None,
        resource: None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
    ) -> FullStatus: ...

    @overload
    async def status(
        self,
        host: str | None = None,
        *,
        resource: str | ResourceType,
        limit: int | None = None,
        after: str | None = None,
    ) -> ResourceStatus: ...

    async def status(
        self,
        host: str | None = None,
        resource: str | ResourceType | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
    ) -> FullStatus | ResourceStatus:
        """The full status (the seed's FullResourceStatus plus `pending`) with a page of the active instances
        (`limit`, default 1000, after instance id `after`; `allocations_next` names the next page), or with
        `resource` that resource's status alone."""
        body = {"host": host, "resource": None if resource is None else str(resource)}
        reply = await self.call("status", {**body, "limit": limit, "after": after})
        return _full_status(reply) if resource is None else _resource_status(reply)

    async def can_allocate(self, resource: str, amount: int, host: str | None = None) -> bool:
        reply = await self.call("can_allocate", {"host": host, "resource": resource, "amount": amount})
        return bool(reply["can_allocate"])

    async def defaults(self, vcpus: int, host: str | None = None) -> BandwidthDefaults:
        """What an instance of `vcpus` is charged for each bandwidth it leaves unstated."""
        return BandwidthDefaults.from_reply(await self.call("defaults", {"host": host, "vcpus": vcpus}))

    async def image_pull_check(self, host: str | None = None) -> ImagePullCheck:
        """Whether an image pull fits; InsufficientResources says which of the two checks fails."""
        return ImagePullCheck.from_reply(await self.call("image_pull_check", {"host": host}))

    async def running_instances(self, host: str | None = None) -> list[InstanceUtilizationInfo]:
        """The seed's InstanceUtilizationInfo of each Running instance: id, name, hypervisor_pid, tap_device,
        allocated_vcpus, allocated_memory_bytes."""
        reply = await self.call("running_instances", {"host": host})
        return [_utilization(item) for item in reply["instances"]]

    async def hosts(self) -> list[str]:
        return list((await self.call("hosts"))["hosts"])

    async def publish_event(self, envelope: Mapping[str, Any]) -> PubAck:
        """Publish one lifecycle event to JetStream on `ledger.events.<host>.<kind>.<action>`.

        `envelope` is what `ledger.events.make_event(type, host, record, version)` builds: the entity's full
        current record and a version (docs/events.md). It is checked against the event contract first
        (InvalidEvent, nothing sent), and the event id is the message id, so a retry after a lost ack is
        dropped by the stream as a duplicate (`PubAck.duplicate`); a failed publish is retried a few times
        with backoff, then raises Unavailable. The first call creates or updates the
        LEDGER_EVENTS stream. The ack means the stream has the event; the ledger applies it soon after
        (`ledger events tail` shows when).
        """
        js = self.nc.jetstream()
        if not self._stream_ready:
            await ensure_stream(js, stream_config())
            self._stream_ready = True
        return await publish_event(js, envelope)
