"""The admission decision, once: which of an ordered group of requests a host can take, and what each costs.

`decide` is pure. The store locks the host, reads its state (capacities, ratios, running totals, GPU slots)
and the earlier holds of the group's idempotency keys, calls `decide`, and writes what it says; a single
validate is a group of one, and fleet placement asks the same question of each candidate host. Every rule
of admission lives here or in the two modules it reads (`host`: what a host has; `charges`: what a request
asks and is charged, default bandwidths included): the order of the checks, the refusal messages with their
numbers, GPU slots and profiles, replays and conflicts of idempotency keys.
Requests are decided in arrival order, each against what its predecessors left, exactly as if they had been
reserved one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from ledger.core.capacity import available, describe_value, insufficient
from ledger.core.charges import BANDWIDTH_FIELDS, AllocationRequest, Ask, Charge, DefaultBandwidth, charge
from ledger.core.errors import Conflict, InsufficientResources, InvalidRequest, LedgerError
from ledger.core.host import CHECK_ORDER, GpuSlots, HostState
from ledger.core.resources import RESOURCES, Source
from ledger.core.units import MAX_AMOUNT

MAX_TTL_SECONDS: Final = 24 * 3600
MAX_KEY_LENGTH: Final = 255


# ---- the earlier holds of idempotency keys ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarlierHold:
    """A reservation already made on the host under an idempotency key (in any state)."""

    reservation_id: str
    host_id: str
    key: str
    status: str
    expires_at: datetime
    charge: Charge

    def same_request(self, request: AllocationRequest) -> bool:
        """Whether `request` repeats the one this hold was made for: the same stated amounts, and the same
        bandwidths left unstated."""
        held = self.charge
        if (
            held.vcpus != request.vcpus
            or held.memory_bytes != request.memory_bytes
            or held.disk_bytes != request.disk_bytes
            or held.gpu != (1 if request.wants_gpu else 0)
            or held.gpu_profile != request.gpu_profile
        ):
            return False
        for name in BANDWIDTH_FIELDS:
            asked = getattr(request, name)
            if (asked is None) != (name in held.defaulted):
                return False
            if asked is not None and asked != getattr(held, name):
                return False
        return True


# ---- the decision ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admit:
    """Grant: hold `charge` for `ttl` seconds."""

    charge: Charge
    ttl: float


@dataclass(frozen=True, slots=True)
class Replay:
    """The key was used before with the same request: answer with that reservation, hold nothing more.
    `earlier` is the reservation already in the ledger, or the position of the grant earlier in the group."""

    earlier: EarlierHold | int


@dataclass(frozen=True, slots=True)
class Reused:
    """The key was used before for a different request: refuse (`conflict`, naming that reservation)."""

    key: str
    earlier: EarlierHold | int


Outcome = Admit | Replay | Reused | LedgerError


def conflict(key: str, reservation_id: str) -> Conflict:
    """The refusal of a request that reuses an idempotency key for different amounts."""
    return Conflict(
        f"idempotency key {key!r} was already used for a different request (reservation {reservation_id})",
        reservation_id=reservation_id,
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """An outcome per ask, in order, and the host's pending totals once every grant is held."""

    outcomes: list[Outcome]
    pending: tuple[int, ...]
    gpu_pending: int

    @property
    def grants(self) -> int:
        return sum(1 for o in self.outcomes if isinstance(o, Admit))


def check_ttl(ttl: float | None, default: float) -> float:
    """A hold's TTL in seconds (`default` when not given); InvalidRequest outside (0, 24 h]."""
    if ttl is None:
        ttl = default
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest(
            f"ttl_seconds must be greater than 0 and at most {MAX_TTL_SECONDS}, got {describe_value(ttl)}",
            field="ttl_seconds",
        )
    return float(ttl)


def check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH):
        raise InvalidRequest(
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH} characters", field="idempotency_key"
        )


def decide(
    host: HostState,
    asks: Sequence[Ask],
    earlier: Mapping[str, EarlierHold],
    defaults: DefaultBandwidth,
    default_ttl: float,
) -> Decision:
    """Decide every ask in order against what is left after its predecessors' grants.

    Per ask: the TTL and key are checked; a key seen before is a replay (the same request) or a conflict;
    then each resource in ADMISSION_ORDER must fit in what is available, then a GPU slot, then the vGPU
    profile must be one the host offers. A refusal holds nothing and leaves the others' decisions as they
    would be without it.
    """
    limits = [limit.effective_limit for limit in host.limits]
    allocated = host.allocated
    pending = list(host.pending)
    gpu = host.gpu
    gpu_pending = gpu.pending if gpu is not None else 0
    seen: dict[str, EarlierHold | int] = dict(earlier)
    outcomes: list[Outcome] = []
    for ask in asks:
        try:
            ttl = check_ttl(ask.ttl, default_ttl)
            key = ask.key
            check_key(key)
            if key is not None and key in seen:
                earlier_hold = seen[key]
                if _same(earlier_hold, ask, asks):
                    outcomes.append(Replay(earlier_hold))
                else:
                    outcomes.append(Reused(key, earlier_hold))
                continue
            granted = charge(ask.request, host, defaults)
            amounts = granted.amounts()
            for index in CHECK_ORDER:
                wanted = amounts[index]
                if wanted and wanted > available(limits[index], allocated[index], pending[index]):
                    raise _shortfall(host, index, wanted, pending[index])
            if granted.gpu:
                _check_gpu(host, gpu, gpu_pending, granted.gpu_profile)
        except LedgerError as refusal:
            refusal.details.setdefault("host", host.host_id)
            outcomes.append(refusal)
            continue
        for index, amount in enumerate(amounts):
            pending[index] += amount
        gpu_pending += granted.gpu
        if key is not None:
            seen[key] = len(outcomes)
        outcomes.append(Admit(granted, ttl))
    return Decision(outcomes, tuple(pending), gpu_pending)


def _same(earlier: EarlierHold | int, ask: Ask, asks: Sequence[Ask]) -> bool:
    if isinstance(earlier, int):
        return asks[earlier].request == ask.request
    return earlier.same_request(ask.request)


def _shortfall(host: HostState, index: int, wanted: int, pending: int) -> InsufficientResources:
    """The seed-style refusal for resource `index`, with the numbers as they stand for this request; on a
    capacity discovery could not read, it says which setting fixes it."""
    status = host._status(index, host.allocated[index], pending)
    refusal = insufficient(status.type, wanted, status)
    if status.source is Source.UNDETECTED:
        hint = status.hint or "configure this host's capacity for it"
        refusal.message = f"{refusal.message}; this host's capacity was not detected: {hint}"
        refusal.details["hint"] = hint
        refusal.args = (refusal.message,)
    return refusal


def _check_gpu(host: HostState, gpu: GpuSlots | None, gpu_pending: int, profile: str | None) -> None:
    if gpu is None or gpu.total == 0:
        raise InsufficientResources(
            "insufficient GPU: no GPU available on this host", resource="gpu", requested=1, available=0
        )
    if gpu.total - gpu.used - gpu_pending < 1:
        raise InsufficientResources(
            f"insufficient GPU: all {gpu.total} {gpu.mode} slots are in use",
            resource="gpu",
            requested=1,
            available=0,
            allocated=gpu.used,
            pending=gpu_pending,
            effective_limit=gpu.total,
        )
    if profile and gpu.profiles and profile not in gpu.profiles:
        raise InvalidRequest(
            f"unknown GPU profile {profile!r}; this host offers: {', '.join(sorted(gpu.profiles))}",
            field="gpu_profile",
        )


def check_totals(host_id: str, allocated: Sequence[int], pending: Sequence[int]) -> None:
    """No host total may pass what a BIGINT holds: refuse (InvalidRequest) a change that would make a
    resource's allocated plus pending amount exceed 2⁶³−1, so no total or report ever overflows."""
    for index, resource in enumerate(RESOURCES):
        if allocated[index] + pending[index] > MAX_AMOUNT:
            raise InvalidRequest(
                f"this would make host {host_id!r}'s {resource.value} total "
                f"{allocated[index] + pending[index]}, beyond the largest amount the ledger holds "
                f"({MAX_AMOUNT})",
                field=resource.value,
                host=host_id,
            )
