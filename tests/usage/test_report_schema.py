"""docs/usage/report.schema.json and the report the code writes and reads agree: a real sampler's report is
valid, and the reports the parser refuses for their shape are invalid by the schema too."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from ledger.core.results import InstanceUtilizationInfo
from ledger.core.usage import InvalidUsage, parse_report
from ledger.usage.sampler import Sampler

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/usage/report.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())


def test_the_schema_is_valid() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_a_real_sampler_report_is_valid_and_parses_back() -> None:
    sampler = Sampler("h1")
    vms = [
        InstanceUtilizationInfo("me", "me", os.getpid(), "", 1, 2**30),
        InstanceUtilizationInfo("gone", "gone", None, "", 1, 2**30),
        InstanceUtilizationInfo("no-tap", "no-tap", os.getpid(), "ledgernotap9", 1, 2**30),
    ]
    sampler.sample(vms, 10.0)
    report = sampler.sample(vms, 10.0)
    data = json.loads(report.to_json())
    VALIDATOR.validate(data)
    assert data["instances"][0]["cpu_vcpus"] is not None  # a second look has rates
    assert parse_report(report.to_json()) == report


GOOD: dict[str, Any] = {
    "host": "h1",
    "at": datetime(2026, 12, 3, tzinfo=UTC).isoformat(),
    "interval_s": 10,
    "instances": [
        {
            "id": "vm",
            "cpu_seconds_total": 1.5,
            "memory_rss_bytes": 10,
            "disk_read_bytes_total": 0,
            "disk_write_bytes_total": 0,
        }
    ],
}


@pytest.mark.parametrize(
    "change",
    [
        {"host": "a.b"},
        {"interval_s": 0},
        {"extra": 1},
        {"at": "yesterday"},
        {"instances": [{"id": "vm"}]},
        {"instances": [{**GOOD["instances"][0], "memory_rss_bytes": -1}]},
        {"instances": [{**GOOD["instances"][0], "memory_rss_bytes": 1.5}]},
        {"instances": [{**GOOD["instances"][0], "surprise": 1}]},
        {"unmeasured": [{"id": "vm"}]},
    ],
)
def test_what_the_parser_refuses_the_schema_refuses(change: dict[str, Any]) -> None:
    bad = {**GOOD, **change}
    assert not VALIDATOR.is_valid(bad)
    with pytest.raises(InvalidUsage):
        parse_report(json.dumps(bad).encode())
    VALIDATOR.validate(GOOD)
    parse_report(json.dumps(GOOD).encode())
