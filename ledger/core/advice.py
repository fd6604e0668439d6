"""Ratio advice: the oversubscription ratio a host's observed usage supports, never more than the evidence
allows. The formula (docs/usage.md states it for operators):

    used   = the highest hourly p95 of the host's total usage in the window
    per    = used / allocated                 (what one allocated unit really uses)
    ratio  = allocated / (used × (1 + headroom))

At ratio r a host may promise `capacity × r`; if new VMs use what today's do, that much allocation would use
`capacity × r × per`, and with the headroom on top it must still fit the physical capacity:
`capacity × r × per × (1 + headroom) ≤ capacity`. The capacity cancels out. The suggestion is rounded down
to one decimal, and there is none without enough evidence (samples and days), with nothing allocated, or
with no usage measured. Kubernetes' VPA recommends p90 plus 15 % for one pod; a host's sum carries more
VMs' peaks at once, so the default here is the p95 plus 20 %. Advice never changes a ratio by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ledger.core.resources import ResourceType

DEFAULT_HEADROOM = 0.20
DEFAULT_MIN_SAMPLES = 1000
DEFAULT_MIN_DAYS = 3.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """What was observed of one resource on one host over the window."""

    used_p95: float | None  # the highest hourly p95 of the host's total, in the resource's unit
    samples: int
    days: float  # from the first to the end of the last hour with samples


@dataclass(frozen=True, slots=True)
class Advice:
    """One resource's suggestion (None when there is none, and `reason` says why)."""

    resource: ResourceType
    current_ratio: float
    allocated: int
    suggested_ratio: float | None
    reason: str
    evidence: Evidence

    def to_dict(self) -> dict[str, object]:
        return {
            "resource": self.resource.value,
            "current_ratio": self.current_ratio,
            "suggested_ratio": self.suggested_ratio,
            "allocated": self.allocated,
            "used_p95": self.evidence.used_p95,
            "samples": self.evidence.samples,
            "days": round(self.evidence.days, 2),
            "reason": self.reason,
        }


def advise(
    resource: ResourceType,
    current_ratio: float,
    allocated: int,
    evidence: Evidence,
    *,
    headroom: float = DEFAULT_HEADROOM,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    min_days: float = DEFAULT_MIN_DAYS,
) -> Advice:
    """The ratio `evidence` supports for `resource` (see the module docstring)."""

    def none(reason: str) -> Advice:
        return Advice(resource, current_ratio, allocated, None, reason, evidence)

    if evidence.used_p95 is None:
        return none("not sampled" if resource is ResourceType.DISK else "no usage measured yet")
    if evidence.samples < min_samples or evidence.days < min_days:
        return none(
            f"not enough evidence: {evidence.samples} samples over {evidence.days:.1f} days "
            f"(needs {min_samples} over {min_days:g})"
        )
    if allocated <= 0:
        return none("nothing allocated: usage says nothing about what a promise costs")
    if evidence.used_p95 <= 0:
        return none("no usage at all: the evidence sets no bound")
    supported = allocated / (evidence.used_p95 * (1.0 + headroom))
    suggested = math.floor(supported * 10) / 10
    if suggested <= 0:
        return none(f"usage exceeds what is allocated ({evidence.used_p95:g} > {allocated})")
    verdict = "higher" if suggested > current_ratio else "lower" if suggested < current_ratio else "the same"
    return Advice(
        resource,
        current_ratio,
        allocated,
        suggested,
        f"{verdict} than the ratio in force: p95 {evidence.used_p95:g} of {allocated} allocated, "
        f"+{headroom:.0%} headroom",
        evidence,
    )
