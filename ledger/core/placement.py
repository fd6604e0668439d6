"""Placement across a fleet: host labels, how candidate hosts are ranked, and what a refusal says when no
host fits. Whether a host fits is `core.admission.decide`'s answer, never decided here."""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.core.capacity import available
from ledger.core.charges import Ask, Charge
from ledger.core.errors import InvalidRequest
from ledger.core.host import HostState
from ledger.core.resources import ADMISSION_ORDER, RESOURCES

SPREAD, PACK = "spread", "pack"
POLICIES: Final = (SPREAD, PACK)
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 1000
DEFAULT_ATTEMPTS: Final = 3
MAX_ATTEMPTS: Final = 20
MAX_LABELS: Final = 32
MAX_LABEL_NAME: Final = 63
MAX_LABEL_VALUE: Final = 255
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")
# the outcome a host that does not carry a requested label counts under, and one per resource and the GPU
LABELS: Final = "labels"
GPU: Final = "gpu"
SHORTFALL_KEYS: Final = (*(r.value for r in ADMISSION_ORDER), GPU, LABELS)


def check_labels(value: Any, field: str = "labels") -> dict[str, str]:
    """Host labels as a plain dict, or InvalidRequest saying what is wrong: at most 32 pairs, names of 1–63
    letters, digits, `_ - . /` (starting with a letter or digit), values of at most 255 characters."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{field} must be an object of name → value strings", field=field)
    if len(value) > MAX_LABELS:
        raise InvalidRequest(f"{field} has {len(value)} labels; at most {MAX_LABELS}", field=field)
    labels: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or len(name) > MAX_LABEL_NAME or not _LABEL_NAME.fullmatch(name):
            raise InvalidRequest(
                f"{field}: label name {str(name)[:80]!r} must be 1 to {MAX_LABEL_NAME} letters, digits, "
                "'_', '-', '.' or '/', starting with a letter or digit",
                field=field,
            )
        if not isinstance(text, str) or len(text) > MAX_LABEL_VALUE:
            raise InvalidRequest(
                f"{field}: label {name!r} must be a string of at most {MAX_LABEL_VALUE} characters",
                field=field,
            )
        labels[name] = text
    return labels


def parse_labels(text: str, field: str = "labels") -> dict[str, str]:
    """`zone=a,rack=r12` → {"zone": "a", "rack": "r12"} (the environment's and the CLI's form)."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise InvalidRequest(f"{field}: {part!r} is not NAME=VALUE", field=field)
        pairs[name.strip()] = value.strip()
    return check_labels(pairs, field)


def check_policy(value: Any) -> str:
    if value not in POLICIES:
        raise InvalidRequest(
            f"policy must be one of {', '.join(POLICIES)}, got {str(value)[:40]!r}", field="policy"
        )
    return str(value)


def check_limit(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequest(f"{field} must be a whole number from 1 to {maximum}", field=field)
    return value


def room(limits: Sequence[int], left: Sequence[int]) -> float:
    """How much room a host has, judged by its tightest resource: the least, over resources with a limit, of
    what is left (`left`, per resource) as a fraction of the limit; 1.0 when nothing has a limit. Computed in
    doubles, as SQL ranks it. Kept on the host row (`hosts.room`) so a search can walk hosts from the most
    room down: a charge only lowers what is left, so no host's room after a charge exceeds its room now."""
    least = 1.0
    for limit, free in zip(limits, left, strict=True):
        if limit > 0:
            least = min(least, float(free) / float(limit))
    return least


def room_after(host: HostState, charge: Charge) -> float:
    """The host's `room` once `charge` is held."""
    amounts = charge.amounts()
    return room_with(host, [held + amount for held, amount in zip(host.pending, amounts, strict=True)])


def room_with(host: HostState, pending: Sequence[int]) -> float:
    """The host's `room` were its pending totals `pending` (per resource, RESOURCES order)."""
    return room(
        [limit.effective_limit for limit in host.limits],
        [
            available(limit.effective_limit, host.allocated[index], pending[index])
            for index, limit in enumerate(host.limits)
        ],
    )


def share_out(
    hosts: Sequence[HostState],
    count: int,
    policy: str,
    pending_with: Callable[[HostState, int], Sequence[int] | None],
) -> list[str]:
    """Where `count` identical asks go when placed one after another, each on the host `policy` ranks first
    once the asks before it are held there (ties by host id): the host of each ask in order, fewer when the
    hosts run out. `pending_with(host, n)`: the host's pending totals with n of the asks held, or None when
    the n-th does not fit (`core.admission.decide` says which). Sequential `place` calls would choose the
    same hosts, so a group of them can be decided at once."""
    sign = -1.0 if policy == SPREAD else 1.0
    queue: list[tuple[float, str, int, HostState]] = []

    def offer(host: HostState, n: int) -> None:
        pending = pending_with(host, n)
        if pending is not None:
            heapq.heappush(queue, (sign * room_with(host, pending), host.host_id, n, host))

    for host in hosts:
        offer(host, 1)
    chosen: list[str] = []
    while queue and len(chosen) < count:
        _, host_id, n, host = heapq.heappop(queue)
        chosen.append(host_id)
        offer(host, n + 1)
    return chosen


def ranked(scored: Sequence[tuple[str, float]], policy: str) -> list[tuple[str, float]]:
    """Best first: `spread` puts the host left with the most room first, `pack` the least; ties by host id."""
    if policy == SPREAD:
        return sorted(scored, key=lambda item: (-item[1], item[0]))
    return sorted(scored, key=lambda item: (item[1], item[0]))


@dataclass(frozen=True, slots=True)
class Shortfalls:
    """Why the hosts that were considered do not fit: how many fail first on each resource (or the GPU),
    and how many lack each requested label."""

    considered: int
    fitting: int
    by_resource: Mapping[str, int]  # resource name or "gpu" → hosts that fail first on it
    by_label: Mapping[str, int]  # "name=value" → hosts that lack that pair (the first they lack)

    def to_dict(self) -> dict[str, int]:
        counts = {key: 0 for key in SHORTFALL_KEYS}
        counts.update(self.by_resource)
        counts[LABELS] = sum(self.by_label.values())
        return counts

    def reasons(self) -> list[str]:
        """Why the hosts that do not fit fall short: `7950 short of cpu`, `50 without label zone=b`."""
        parts = [f"{self.by_resource[k]} short of {k}" for k in SHORTFALL_KEYS if self.by_resource.get(k)]
        return parts + [f"{n} without label {pair}" for pair, n in self.by_label.items() if n]

    def summary(self) -> str:
        """One line people can act on, e.g. `no host fits: 7950 short of cpu, 2000 short of memory, 50 without
        label zone=b (10000 considered)`."""
        reasons = ", ".join(self.reasons()) or "no host to consider"
        return f"no host fits: {reasons} ({self.considered} considered)"


RESOURCE_NAMES: Final = tuple(r.value for r in RESOURCES)


@dataclass(frozen=True, slots=True)
class PlaceCall:
    """One `place` call: the ask, and which hosts may take it and in what order."""

    ask: Ask
    labels: Mapping[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    policy: str = SPREAD
    attempts: int = DEFAULT_ATTEMPTS

    def search(self) -> Hashable:
        """Calls equal in this are answered by one search."""
        return (self.ask.request, tuple(sorted(self.labels.items())), self.exclude, self.policy)
