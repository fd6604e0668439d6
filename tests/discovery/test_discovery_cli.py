"""`ledger discover`: JSON and table output from a real subprocess, and a clean error for a bad --root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ledger.config import ENV_NAMES
from tests.hosttree import HostTree

REPO = Path(__file__).resolve().parents[2]


def run_ledger(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`python -m ledger ARGS` with only our data dir from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_discover_json_on_a_recorded_host(host_tree: HostTree, tmp_path: Path) -> None:
    result = run_ledger("discover", "--root", str(host_tree("h200-vm")), "--json", data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"] == {"capacity": 16, "source": "detected"}
    assert data["memory"] == {"capacity": 131981020 * 1024, "source": "detected"}
    assert data["network"]["source"] == "undetected" and "NETWORK_LIMIT" in data["network"]["hint"]
    assert data["gpu"]["devices"][0]["name"] == "H200"


def test_discover_table_shows_units_sources_hints_and_gpus(host_tree: HostTree, tmp_path: Path) -> None:
    result = run_ledger("discover", "--root", str(host_tree("passthrough-host")), data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["resource", "capacity", "source", "hint"]
    assert "8 vCPUs" in lines[1] and "detected" in lines[1]
    assert "25.0 Gbps" in result.stdout
    assert "1.0 GB/s" in result.stdout and "default" in result.stdout
    assert "passthrough: 2 slots, 1 used" in lines[-1] and "RTX A6000" in lines[-1]


def test_discover_table_marks_undetected_network_as_unknown(host_tree: HostTree, tmp_path: Path) -> None:
    result = run_ledger("discover", "--root", str(host_tree("no-route-host")), data_dir=tmp_path / "d")
    network = next(line for line in result.stdout.splitlines() if line.startswith("network"))
    assert "unknown" in network and "undetected" in network and "NETWORK_LIMIT" in network


def test_discover_with_a_missing_root_fails_cleanly(tmp_path: Path) -> None:
    result = run_ledger("discover", "--root", str(tmp_path / "nope"), "--json", data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("ledger: ")


def test_discover_on_this_machine_exits_zero(tmp_path: Path) -> None:
    result = run_ledger("discover", "--json", data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"cpu", "memory", "disk", "network", "disk_io", "gpu"}


def test_discover_with_a_file_as_root_fails_cleanly(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = run_ledger("discover", "--root", str(not_a_dir), data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert result.stderr.startswith("ledger: ") and "Traceback" not in result.stderr


def test_discover_table_lists_vgpu_profiles(host_tree: HostTree, tmp_path: Path) -> None:
    result = run_ledger("discover", "--root", str(host_tree("vgpu-host")), data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    gpu = result.stdout.splitlines()[-1]
    assert "vgpu: 4 slots, 2 used" in gpu
    assert "NVIDIA H100-20C (nvidia-1061, 20.0 GiB, 2 free)" in gpu
