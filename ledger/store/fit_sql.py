"""`core.admission.decide`'s fit test and `core.placement.room_after`'s score, rendered in SQL over the
host rows, for fleet searches (store/fleet.py) to narrow and rank with: each host's outcome is the first
resource, in admission's order, whose request exceeds what is available (the same `available` formula, the
same charges and bandwidth defaults), else the GPU slots, else `fit`. The hosts a search returns are decided
again by `decide` itself; a test holds the rendering equal to the decision on random fleets.

SQLite computes a defaulted bandwidth in 64-bit integers (a product past 2⁶³ becomes a float there, so an
extreme host may be ranked on an approximation; `decide` still confirms it); PostgreSQL in NUMERIC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.core.charges import AllocationRequest, DefaultBandwidth
from ledger.core.host import CHECK_ORDER
from ledger.core.placement import GPU, LABELS
from ledger.core.resources import RESOURCES
from ledger.core.units import MAX_AMOUNT


@dataclass(frozen=True, slots=True)
class FitSql:
    """The rendering for one engine and one defaults policy."""

    postgres: bool
    defaults: DefaultBandwidth

    def expressions(
        self, request: AllocationRequest, labels: Mapping[str, str]
    ) -> tuple[list[tuple[str, str]], str, dict[str, Any]]:
        """Why a host does not fit, as (SQL condition, outcome) pairs in admission's order (`labels:N`, a
        resource's name, `gpu`; none true: `fit`), a host's score as SQL, and their parameters. What each
        resource has left is the host row's `avail_*` (core.capacity.available, written with the totals); a
        resource the request does not charge is not checked, as in decide."""
        params: dict[str, Any] = {"vcpus": request.vcpus}
        charge = {
            "cpu": self._stated(request.vcpus, "cpu", params),
            "memory": self._stated(request.memory_bytes, "memory", params),
            "disk": self._stated(request.disk_bytes, "disk", params),
            "network": self._network(request, params),
            "disk_io": self._bandwidth(request.disk_io_bps, "disk_io", "disk_io", params),
        }
        reasons = []
        for index, (name, value) in enumerate(labels.items()):
            params[f"label_name_{index}"] = self._label_key(name)
            params[f"label_value_{index}"] = value
            reasons.append((self._label(index), f"{LABELS}:{index}"))
        for position in CHECK_ORDER:
            resource = RESOURCES[position].value
            amount = charge[resource]
            if amount != "0":  # avail_* is never negative: an amount of 0 never exceeds it
                reasons.append((f"{amount} > h.avail_{resource}", resource))
        if request.wants_gpu:
            reasons.append((self._gpu_short(request, params), GPU))
        least = "LEAST" if self.postgres else "min"
        fractions = ", ".join(
            f"CASE WHEN h.limit_{r.value} > 0 THEN CAST(h.avail_{r.value} - {charge[r.value]} AS FLOAT) "
            f"/ CAST(h.limit_{r.value} AS FLOAT) ELSE 1.0 END"
            for r in RESOURCES
        )
        return reasons, f"{least}(1.0, {fractions})", params

    @staticmethod
    def _stated(amount: int, name: str, params: dict[str, Any]) -> str:
        if amount == 0:
            return "0"
        params[name] = amount
        return f":{name}"

    def _bandwidth(self, stated: int | None, name: str, capacity: str, params: dict[str, Any]) -> str:
        """A bandwidth as charged: the stated amount, or the default (core.capacity.proportional_share: the
        vCPU share of the capacity, rounded down, at most what a BIGINT holds)."""
        if stated is not None:
            return self._stated(stated, name, params)
        if not self.defaults.enabled or params["vcpus"] == 0:
            return "0"
        source = f"h.limit_{capacity}" if self.defaults.uses_ratio else f"h.capacity_{capacity}"
        # in 64 bits while the product fits (it nearly always does); beyond that in NUMERIC (PostgreSQL)
        params["safe"] = MAX_AMOUNT // params["vcpus"]
        exact = f"(:vcpus * {source}) / h.capacity_cpu"
        if self.postgres:
            wide = f"LEAST(FLOOR(CAST(:vcpus AS NUMERIC) * {source} / h.capacity_cpu), {MAX_AMOUNT})"
            share = f"CASE WHEN {source} <= :safe THEN {exact} ELSE {wide} END"
        else:
            share = exact
        return f"(CASE WHEN h.capacity_cpu > 0 THEN {share} ELSE 0 END)"

    def _network(self, request: AllocationRequest, params: dict[str, Any]) -> str:
        down = self._bandwidth(request.network_download_bps, "download", "network", params)
        up = self._bandwidth(request.network_upload_bps, "upload", "network", params)
        if down == up:
            return down
        return f"(CASE WHEN {down} >= {up} THEN {down} ELSE {up} END)"

    def _gpu_short(self, request: AllocationRequest, params: dict[str, Any]) -> str:
        greatest = "GREATEST" if self.postgres else "max"
        short = f"h.gpu_total = 0 OR h.gpu_total - {greatest}(h.alloc_gpu, h.gpu_busy) - h.pend_gpu < 1"
        if not request.gpu_profile:
            return f"({short})"
        params["profile"] = request.gpu_profile
        if self.postgres:
            offered = "(CAST(h.gpu_status AS JSONB) -> 'profiles')"
            has = f"{offered} @> jsonb_build_array(jsonb_build_object('name', CAST(:profile AS TEXT)))"
            lacks = f"(jsonb_array_length(COALESCE({offered}, '[]'::jsonb)) > 0 AND NOT ({has}))"
        else:
            profiles = "json_each(h.gpu_status, '$.profiles')"
            lacks = (
                f"(EXISTS (SELECT 1 FROM {profiles}) AND NOT EXISTS "
                f"(SELECT 1 FROM {profiles} p WHERE json_extract(p.value, '$.name') = :profile))"
            )
        return f"({short} OR {lacks})"

    def _label(self, index: int) -> str:
        """The host lacks the requested label pair `index`."""
        name, value = f":label_name_{index}", f":label_value_{index}"
        if self.postgres:
            return f"((h.labels ->> {name}) IS NULL OR (h.labels ->> {name}) <> {value})"
        return f"(json_extract(h.labels, {name}) IS NULL OR json_extract(h.labels, {name}) <> {value})"

    def _label_key(self, name: str) -> str:
        return name if self.postgres else f'$."{name}"'
