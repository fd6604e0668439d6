"""`ledger fit`, `ledger place` and `ledger status --all` as real subprocesses on a SQLite fleet, directly on
the database and through a running service; and LedgerClient.candidates/place against that service."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.service import LedgerService
from ledger.client import Candidate, LedgerClient
from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.store.ledger import Ledger
from tests.conftest import capacities
from tests.service.helpers import base_env

Run = Callable[..., subprocess.CompletedProcess[str]]
GIB = 2**30
RESOURCES = ("cpu", "memory", "disk", "network", "disk_io")
# The fleet of docs/protocol.md's candidates examples: (vCPUs, memory, labels) per host.
FLEET = {
    "demo": (8, 24 * GIB, {"zone": "a"}),
    "node-1": (16, 64 * GIB, {"zone": "a"}),
    "node-2": (32, 128 * GIB, {"zone": "b"}),
    "node-3": (8, 32 * GIB, {"zone": "b", "rack": "r1"}),
}
PLACED = re.compile(r"(\S+) ([0-9a-f]{32})")


@pytest.fixture
def fleet_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    ledger = Ledger.open(url)
    for host, (cpu, memory, labels) in FLEET.items():
        ledger.register_host(host, capacities(cpu=cpu, memory=memory), {}, labels=labels)
    ledger.close()
    yield url


def _runner(tmp_path: Path, **settings: str) -> Run:
    """`ledger ARGS…` with only these settings (the developer's own cannot leak in); never raises on exit."""
    env = {k: v for k, v in base_env().items() if not k.endswith("_LIMIT")}
    env.update(LEDGER_DATA_DIR=str(tmp_path), LEDGER_HOST_ID="not-in-the-fleet", **settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def ledger_cli(tmp_path: Path, fleet_url: str) -> Run:
    """The CLI directly on the fleet's database."""
    return _runner(tmp_path, LEDGER_DATABASE_URL=fleet_url)


def ok(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    return process.stdout


def refused(process: subprocess.CompletedProcess[str], code: int) -> str:
    assert process.returncode == code, (process.stdout, process.stderr)
    assert "Traceback" not in process.stderr
    return process.stderr


def as_json(process: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(process))


# ---- ledger fit -------------------------------------------------------------------------------------------


def test_fit_lists_every_fitting_host_best_first_with_what_it_has_available(ledger_cli: Run) -> None:
    lines = ok(ledger_cli("fit", "--vcpus", "4", "--memory", "8GiB")).splitlines()

    assert lines[0].split() == ["host", "score", *RESOURCES]
    rows = [line.split(maxsplit=2) for line in lines[1:-1]]
    assert [(host, score) for host, score, _ in rows] == [
        ("node-2", "0.938"),
        ("node-1", "0.875"),
        ("node-3", "0.750"),
        ("demo", "0.667"),
    ]
    assert lines[1].split()[2:] == ["128", "128.0", "GiB", "931.3", "GiB", "20.0", "Gbps", "2.0", "GB/s"]
    assert lines[-1] == "4 considered, 4 fit"


def test_fit_json_is_the_candidates_reply(ledger_cli: Run) -> None:
    reply = as_json(ledger_cli("fit", "--vcpus", "4", "--memory", "8GiB", "--json"))

    assert [c["host"] for c in reply["candidates"]] == ["node-2", "node-1", "node-3", "demo"]
    assert reply["candidates"][0] == {
        "host": "node-2",
        "available": {
            "cpu": 128,
            "memory": 128 * GIB,
            "disk": 1_000 * 10**9,
            "network": 2_500_000_000,
            "disk_io": 2_000_000_000,
        },
        "score": 0.9375,
    }
    assert (reply["considered"], reply["fitting"]) == (4, 4)
    assert set(reply["shortfalls"].values()) == {0}


def test_fit_keeps_to_the_labels_ranks_by_the_policy_and_stops_at_the_limit(ledger_cli: Run) -> None:
    args = ("fit", "--vcpus", "4", "--memory", "8GiB", "--label", "zone=b")

    packed = ok(ledger_cli(*args, "--policy", "pack")).splitlines()
    spread = ok(ledger_cli(*args, "--policy", "spread", "--limit", "1")).splitlines()

    assert [line.split()[0] for line in packed[1:-1]] == ["node-3", "node-2"]
    assert packed[-1] == "4 considered, 2 fit; 2 without label zone=b"
    assert [line.split()[0] for line in spread[1:-1]] == ["node-2"]
    assert spread[-1] == "4 considered, 2 fit; 2 without label zone=b"


def test_fit_takes_every_label_given_and_leaves_out_the_excluded_hosts(ledger_cli: Run) -> None:
    both = as_json(ledger_cli("fit", "--vcpus", "1", "--label", "zone=b", "--label", "rack=r1", "--json"))
    excluded = as_json(
        ledger_cli("fit", "--vcpus", "1", "--exclude", "node-2", "--exclude", "demo", "--json")
    )

    assert [c["host"] for c in both["candidates"]] == ["node-3"]
    assert both["shortfalls"]["labels"] == 3
    assert [c["host"] for c in excluded["candidates"]] == ["node-1", "node-3"]
    assert excluded["considered"] == 2


def test_fit_says_why_no_host_fits_and_exits_3(ledger_cli: Run) -> None:
    process = ledger_cli("fit", "--vcpus", "64", "--label", "zone=a")

    assert process.stdout == ""
    # node-1 has room for 64 vCPUs at its 4.0 ratio, but not for their default share of its uplink
    message = (
        "ledger: no host fits: 1 short of cpu, 1 short of network, 2 without label zone=a (4 considered)"
    )
    assert refused(process, 3).strip() == message


def test_fit_json_when_no_host_fits_prints_the_reply_and_exits_3(ledger_cli: Run) -> None:
    process = ledger_cli("fit", "--vcpus", "1000", "--json")

    assert refused(process, 3).strip() == "ledger: no host fits: 4 short of cpu (4 considered)"
    reply = json.loads(process.stdout)
    assert (reply["candidates"], reply["fitting"], reply["shortfalls"]["cpu"]) == ([], 0, 4)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("fit", "--vcpus", "1", "--label", "zone"), "argument --label: 'zone' is not NAME=VALUE"),
        (("fit", "--vcpus", "1", "--label", "=a"), "argument --label: label name ''"),
        (("fit", "--vcpus", "1", "--policy", "fill"), "argument --policy: invalid choice: 'fill'"),
        (("fit", "--vcpus", "1", "--limit", "0"), "--limit must be a whole number from 1 to 1000"),
        (("fit", "--vcpus", "1", "--limit", "1001"), "--limit must be a whole number from 1 to 1000"),
        (("fit", "--vcpus", "1", "--memory", "lots"), "argument --memory"),
        (("fit", "--vcpus", "-1"), "vCPUs cannot be negative"),
        (("place", "--vcpus", "1", "--attempts", "21"), "--attempts must be a whole number from 1 to 20"),
        (("place", "--vcpus", "1", "--label", "zone"), "argument --label: 'zone' is not NAME=VALUE"),
        (("place", "--vcpus", "1", "--ttl", "0"), "ttl"),
    ],
)
def test_bad_input_exits_2_saying_what_is_wrong(ledger_cli: Run, args: tuple[str, ...], says: str) -> None:
    assert says in refused(ledger_cli(*args), 2)


# ---- ledger place -----------------------------------------------------------------------------------------


def test_place_prints_the_host_and_the_reservation_id(ledger_cli: Run) -> None:
    line = ok(ledger_cli("place", "--vcpus", "4", "--label", "zone=b", "--policy", "pack")).strip()

    placed = PLACED.fullmatch(line)
    assert placed is not None and placed[1] == "node-3"
    fleet = {h["host"]: h for h in as_json(ledger_cli("status", "--all", "--json"))}
    assert fleet["node-3"]["cpu"]["pending"] == 4
    assert sum(h["cpu"]["pending"] for h in fleet.values()) == 4


def test_place_with_the_same_key_returns_the_same_reservation(ledger_cli: Run) -> None:
    args = ("place", "--vcpus", "2", "--memory", "1GiB", "--key", "vm-77", "--ttl", "300")

    first = as_json(ledger_cli(*args, "--json"))
    again = ok(ledger_cli(*args)).strip()

    assert (first["host"], first["status"], first["replayed"]) == ("node-2", "held", False)
    assert again == f"{first['host']} {first['reservation_id']}"
    replayed = as_json(ledger_cli(*args, "--json"))
    assert (replayed["reservation_id"], replayed["replayed"]) == (first["reservation_id"], True)
    fleet = as_json(ledger_cli("status", "--all", "--json"))
    assert sum(h["cpu"]["pending"] for h in fleet) == 2


def test_place_refused_says_why_on_stderr_and_exits_3(ledger_cli: Run) -> None:
    process = ledger_cli("place", "--vcpus", "64", "--label", "zone=a")

    assert process.stdout == ""
    message = (
        "ledger: no host fits: 1 short of cpu, 1 short of network, 2 without label zone=a (4 considered)"
    )
    assert refused(process, 3).strip() == message


# ---- ledger status --all ----------------------------------------------------------------------------------


def test_status_all_prints_a_line_per_host_with_its_labels_and_a_bar_per_resource(ledger_cli: Run) -> None:
    ok(ledger_cli("place", "--vcpus", "8", "--label", "rack=r1"))

    lines = ok(ledger_cli("status", "--all")).splitlines()

    assert lines[0].split() == ["host", "labels", *RESOURCES]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["demo", "zone=a"],
        ["node-1", "zone=a"],
        ["node-2", "zone=b"],
        ["node-3", "zone=b,rack=r1"],
    ]
    assert lines[4].split()[2:4] == ["[++........]", "25%"]  # 8 of node-3's 32 vCPUs, held
    assert all(line.count("[") == len(RESOURCES) for line in lines[1:])


def test_status_all_json_is_a_list_with_each_hosts_labels_and_resources(ledger_cli: Run) -> None:
    hosts = as_json(ledger_cli("status", "--all", "--json"))

    assert [h["host"] for h in hosts] == sorted(FLEET)
    for host in hosts:
        assert list(host) == ["host", "labels", *RESOURCES]
        assert host["labels"] == FLEET[host["host"]][2]
        assert host["cpu"]["capacity"] == FLEET[host["host"]][0]
        assert host["cpu"]["effective_limit"] == 4 * FLEET[host["host"]][0]
        assert {host[r]["type"] for r in RESOURCES} == set(RESOURCES)


def test_status_all_sorts_by_a_resources_share_in_use_fullest_first(ledger_cli: Run) -> None:
    ok(ledger_cli("place", "--vcpus", "8", "--memory", "1GiB", "--label", "zone=a", "--policy", "pack"))
    ok(ledger_cli("place", "--vcpus", "1", "--memory", "32GiB", "--label", "zone=b"))

    def order(*sort: str) -> list[str]:
        return [h["host"] for h in as_json(ledger_cli("status", "--all", "--json", *sort))]

    assert order("--sort", "cpu") == ["demo", "node-2", "node-1", "node-3"]  # 25%, 0.8%, then 0% by id
    assert order("--sort", "memory") == ["node-2", "demo", "node-1", "node-3"]
    assert order("--sort", "host") == order() == sorted(FLEET)
    text = ok(ledger_cli("status", "--all", "--sort", "cpu")).splitlines()
    assert [line.split()[0] for line in text[1:]] == order("--sort", "cpu")


def test_status_all_puts_a_host_without_a_limit_last_and_shows_no_bar_for_it(
    ledger_cli: Run, fleet_url: str
) -> None:
    ledger = Ledger.open(fleet_url, migrate=False)
    ledger.register_host("aaa-no-uplink", capacities(network=0), {})
    ledger.close()

    lines = ok(ledger_cli("status", "--all", "--sort", "network")).splitlines()

    assert lines[-1].split()[:2] == ["aaa-no-uplink", "-"]
    assert "[??????????]   n/a" in lines[-1]


def test_status_all_does_not_go_with_host_and_sort_needs_all(ledger_cli: Run) -> None:
    assert "not allowed with argument --all" in refused(ledger_cli("status", "--all", "--host", "demo"), 2)
    assert refused(ledger_cli("status", "--sort", "cpu"), 2).strip() == "ledger: --sort goes with --all"
    assert "invalid choice: 'gpu'" in refused(ledger_cli("status", "--all", "--sort", "gpu"), 2)


# ---- through the service ----------------------------------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path, fleet_url: str) -> AsyncIterator[str]:
    """An in-process LedgerService on an embedded NATS server, on the fleet's database; yields its URL."""
    server = EmbeddedNats(tmp_path / "nats")
    url = await asyncio.to_thread(server.start)
    ledger = Ledger.open(fleet_url, migrate=False)
    nc = await connect(url, name="fleet-test")
    running = LedgerService(nc, ledger, default_host=None)
    await running.start()
    try:
        yield url
    finally:
        await running.stop()
        await nc.close()
        ledger.close()
        await asyncio.to_thread(server.stop)


async def test_the_client_finds_candidates_and_places_on_the_best(service: str) -> None:
    async with await LedgerClient.connect(service) as client:
        found = await client.candidates(
            vcpus=4, memory_bytes=8 * GIB, labels={"zone": "b"}, policy="pack", limit=1
        )
        placed = await client.place(
            vcpus=4, memory_bytes=8 * GIB, labels={"zone": "b"}, policy="pack", idempotency_key="vm-1"
        )
        again = await client.place(
            vcpus=4, memory_bytes=8 * GIB, labels={"zone": "b"}, policy="pack", idempotency_key="vm-1"
        )
        elsewhere = await client.candidates(vcpus=1, exclude_hosts=["node-1", "node-2", "node-3"])
        for call in (client.candidates, client.place):  # one host id alone is not its characters
            with pytest.raises(InvalidRequest, match=r"\['node-1'\]") as lone:
                await call(vcpus=1, exclude_hosts="node-1")
            assert lone.value.details["field"] == "exclude_hosts"

    assert found.candidates == [
        Candidate(
            "node-3",
            {
                "cpu": 32,
                "memory": 32 * GIB,
                "disk": 10**12,
                "network": 2_500_000_000,
                "disk_io": 2_000_000_000,
            },
            0.75,
        )
    ]
    assert (found.considered, found.fitting, found.shortfalls["labels"]) == (4, 2, 2)
    assert (placed.host, placed.status, placed.replayed, placed.charged["vcpus"]) == (
        "node-3",
        "held",
        False,
        4,
    )
    assert placed.defaulted == ("network_download_bps", "network_upload_bps", "disk_io_bps")
    assert (again.reservation_id, again.replayed) == (placed.reservation_id, True)
    assert [c.host for c in elsewhere.candidates] == ["demo"]


async def test_the_client_raises_the_refusal_with_the_counts_when_no_host_fits(service: str) -> None:
    async with await LedgerClient.connect(service) as client:
        nothing = await client.candidates(vcpus=64, labels={"zone": "a"})
        with pytest.raises(InsufficientResources) as refusal:
            await client.place(vcpus=64, labels={"zone": "a"})

    assert (nothing.candidates, nothing.fitting) == ([], 0)
    summary = "no host fits: 1 short of cpu, 1 short of network, 2 without label zone=a (4 considered)"
    assert refusal.value.message == summary
    assert refusal.value.details["shortfalls"] == nothing.shortfalls
    assert (refusal.value.details["considered"], refusal.value.details["fitting"]) == (4, 0)


async def test_the_commands_answer_the_same_through_the_service(
    tmp_path: Path, fleet_url: str, service: str
) -> None:
    direct = _runner(tmp_path / "direct", LEDGER_DATABASE_URL=fleet_url)
    remote = _runner(tmp_path / "remote", LEDGER_NATS_URL=service)
    placed = ok(await asyncio.to_thread(remote, "place", "--vcpus", "8", "--label", "rack=r1"))
    cases = {  # what is asked, and the exit code expected either way (a refusal changes nothing)
        ("fit", "--vcpus", "4", "--memory", "8GiB", "--label", "zone=b", "--label", "rack=r1"): 0,
        ("fit", "--vcpus", "4", "--policy", "pack", "--limit", "2", "--exclude", "demo", "--json"): 0,
        ("fit", "--vcpus", "64", "--label", "zone=a"): 3,
        ("place", "--vcpus", "200"): 3,
        ("status", "--all"): 0,
        ("status", "--all", "--json", "--sort", "network"): 0,
        ("status", "--host", "node-3", "--json"): 0,
        ("status", "--host", "node-9"): 4,
        ("defaults", "--vcpus", "4", "--host", "node-1"): 0,
        ("defaults", "--vcpus", "4", "--host", "node-2", "--json"): 0,
        ("image-pull-check", "--host", "node-1"): 0,
        ("image-pull-check", "--host", "node-2", "--json"): 0,
    }

    answers = await asyncio.gather(
        *(asyncio.to_thread(run, *args) for args in cases for run in (direct, remote))
    )

    assert PLACED.fullmatch(placed.strip()) and placed.startswith("node-3 ")
    for (args, code), on_db, via_service in zip(cases.items(), answers[::2], answers[1::2], strict=True):
        assert (on_db.returncode, "Traceback" in on_db.stderr) == (code, False), (args, on_db.stderr)
        assert (via_service.returncode, via_service.stdout, via_service.stderr) == (
            on_db.returncode,
            on_db.stdout,
            on_db.stderr,
        ), args
