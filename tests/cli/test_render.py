"""The status table: an undetected capacity gets a line saying what to configure."""

from __future__ import annotations

from typing import Any

from ledger.cli.render import render_status
from ledger.core.resources import ResourceType


def _resource(name: str, limit: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": name,
        "capacity": limit,
        "effective_limit": limit,
        "allocated": 0,
        "pending": 0,
        "available": limit,
        "oversub_ratio": 1.0,
        "source": "detected",
        **extra,
    }


def test_an_undetected_capacity_is_explained_under_the_table() -> None:
    hint = "eth0 reports no link speed; set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"
    status: dict[str, Any] = {"host": "h1", "allocations": []}
    for resource in ResourceType:
        status[resource.value] = _resource(resource.value, 1000)
    status["network"] = _resource("network", 0, source="undetected", hint=hint)

    lines = render_status(status).splitlines()

    assert f"network: not detected; {hint}" in lines
    assert sum("not detected" in line for line in lines) == 1
    network_row = next(line for line in lines if line.startswith("network "))
    assert "n/a" in network_row and network_row.endswith("undetected")


def test_what_vms_really_use_is_drawn_inside_what_they_were_allocated() -> None:
    status: dict[str, Any] = {"host": "h1", "allocations": []}
    for resource in ResourceType:
        status[resource.value] = _resource(resource.value, 24, allocated=12)
    status["cpu"]["used"] = 3.0  # of 12 allocated vCPUs, 3 busy
    lines = render_status(status).splitlines()
    cpu = next(line for line in lines if line.startswith("cpu "))
    assert "[===#########............]" in cpu and " 3.0 " in cpu
    memory = next(line for line in lines if line.startswith("memory "))
    assert "[############............]" in memory  # not sampled: no used glyph, and "-" as its figure
    assert memory.split()[3] == "-"
