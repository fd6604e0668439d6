"""An asyncio client for orchestrators: the `ledger` service over NATS request-reply, plus event publishing.

    async with await LedgerClient.connect("nats://127.0.0.1:4222") as ledger:
        grant = await ledger.validate(vcpus=4, memory_bytes=8 * 2**30, idempotency_key="vm-42")
        placed = await ledger.place(vcpus=4, labels={"zone": "b"}, idempotency_key="vm-43")  # best host in b
        ...
        await ledger.publish_event(make_event("instance.created", host, record, version=1))

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
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck

from ledger.bus.connect import connect
from ledger.bus.jetstream import ensure_stream, stream_config
from ledger.bus.protocol import PREFIX
from ledger.bus.publisher import publish_event
from ledger.config import Settings
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
        url: str,
        settings: Settings | None = None,
        *,
        timeout: float = 5.0,
        reconnect_forever: bool = True,
    ) -> LedgerClient:
        """A client on its own connection (a one-shot caller passes reconnect_forever=False to fail fast)."""
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
                "exclude_hosts": None if exclude_hosts is None else list(exclude_hosts),
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
                "exclude_hosts": None if exclude_hosts is None else list(exclude_hosts),
                "policy": policy,
                "attempts": attempts,
                "idempotency_key": idempotency_key,
                "ttl_seconds": ttl_seconds,
            },
        )
        return _reservation(reply)

    async def release(self, reservation_id: str) -> dict[str, Any]:
        return await self.call("release", {"reservation_id": reservation_id})

    async def status(
        self,
        host: str | None = None,
        resource: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        """The full status (the seed's FullResourceStatus plus `pending`) with a page of the active instances
        (`limit`, default 1000, after instance id `after`; `allocations_next` names the next page), or one
        resource's."""
        return await self.call("status", {"host": host, "resource": resource, "limit": limit, "after": after})

    async def can_allocate(self, resource: str, amount: int, host: str | None = None) -> bool:
        reply = await self.call("can_allocate", {"host": host, "resource": resource, "amount": amount})
        return bool(reply["can_allocate"])

    async def defaults(self, vcpus: int, host: str | None = None) -> dict[str, Any]:
        return await self.call("defaults", {"host": host, "vcpus": vcpus})

    async def image_pull_check(self, host: str | None = None) -> dict[str, Any]:
        return await self.call("image_pull_check", {"host": host})

    async def running_instances(self, host: str | None = None) -> list[dict[str, Any]]:
        """The seed's InstanceUtilizationInfo of each Running instance: id, name, hypervisor_pid, tap_device,
        allocated_vcpus, allocated_memory_bytes."""
        return list((await self.call("running_instances", {"host": host}))["instances"])

    async def hosts(self) -> list[str]:
        return list((await self.call("hosts"))["hosts"])

    async def publish_event(self, envelope: Mapping[str, Any]) -> PubAck:
        """Publish one lifecycle event (see `ledger.events.make_event`); retries keep its message id."""
        js = self.nc.jetstream()
        if not self._stream_ready:
            await ensure_stream(js, stream_config())
            self._stream_ready = True
        return await publish_event(js, envelope)
