"""The sampler against real processes and real network devices: a child that burns a core and touches
memory, a veth pair in namespaces of the test's own with known traffic, and the ways a VM goes unmeasured."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ledger.core.results import InstanceUtilizationInfo
from ledger.core.usage import InstanceUsage, UsageReport
from ledger.usage.sampler import Sampler

MIB = 2**20
TOUCHED = 96 * MIB
BURN = f"""
import sys, time
block = bytearray({TOUCHED})
for offset in range(0, len(block), 4096):
    block[offset] = 1
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    pass
"""
SLEEP = "import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(600)\n"


def spawn(code: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        stop(child)


def vm(pid: int | None, tap: str = "", instance_id: str = "vm-1") -> InstanceUtilizationInfo:
    return InstanceUtilizationInfo(instance_id, instance_id, pid, tap, 2, 4 * 2**30)


def cpu_seconds(*pids: int) -> float:
    """CPU time the processes used so far (user + system), read from /proc/<pid>/stat by hand."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime and stat's stime: fields 14 and 15
    return total / os.sysconf("SC_CLK_TCK")


def assert_vcpus_match(measured: float | None, used_s: float, wall_s: float) -> None:
    """The sampler's vCPUs are the CPU seconds the process used per second of wall time, compared with what
    the test measured itself over (nearly) the same interval: the unit, whatever else the machine runs."""
    expected = used_s / wall_s
    assert expected > 0.1, f"the burning process barely ran ({expected:.2f} cores): nothing to compare"
    assert measured is not None and abs(measured - expected) <= 0.1 + 0.1 * expected, (measured, expected)


def only(report: UsageReport) -> InstanceUsage:
    assert not report.unmeasured, report.unmeasured
    assert len(report.instances) == 1
    return report.instances[0]


@pytest.mark.serial
def test_a_process_burning_one_core_uses_one_vcpu_and_its_touched_memory(
    children: list[subprocess.Popen[str]],
) -> None:
    burner = spawn(BURN)
    children.append(burner)
    sampler = Sampler("h")
    started, cpu_before = time.monotonic(), cpu_seconds(burner.pid)
    first = only(sampler.sample([vm(burner.pid)], 10.0))
    assert first.cpu_vcpus is None  # a first look has no interval to measure over
    time.sleep(3.0)
    second = only(sampler.sample([vm(burner.pid)], 10.0))
    assert_vcpus_match(second.cpu_vcpus, cpu_seconds(burner.pid) - cpu_before, time.monotonic() - started)
    assert second.cpu_vcpus is not None and 0.8 <= second.cpu_vcpus <= 1.2  # a core of its own (serial)
    assert second.cpu_seconds_total > first.cpu_seconds_total
    assert second.memory_rss_bytes >= TOUCHED
    assert second.network_rx_bps is None and second.network_rx_bytes_total is None  # no TAP device


@pytest.mark.serial
def test_a_process_tree_is_measured_whole(children: list[subprocess.Popen[str]]) -> None:
    # a parent that sleeps and a child of its own that burns: the VM's cost is the tree's
    parent_code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {BURN!r}], stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "child.wait()\n"
    )
    parent = spawn(parent_code)
    children.append(parent)
    try:
        tree = [parent.pid, *(p.pid for p in psutil.Process(parent.pid).children(recursive=True))]
        assert len(tree) == 2
        sampler = Sampler("h")
        started, cpu_before = time.monotonic(), cpu_seconds(*tree)
        sampler.sample([vm(parent.pid)], 10.0)
        time.sleep(2.0)
        usage = only(sampler.sample([vm(parent.pid)], 10.0))
        assert_vcpus_match(usage.cpu_vcpus, cpu_seconds(*tree) - cpu_before, time.monotonic() - started)
        assert usage.cpu_vcpus is not None and 0.8 <= usage.cpu_vcpus <= 1.2  # the burning child's core
        assert usage.memory_rss_bytes >= TOUCHED
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()


def test_a_vm_without_a_pid_a_gone_process_and_a_missing_tap_are_unmeasured(
    children: list[subprocess.Popen[str]],
) -> None:
    sleeper = spawn(SLEEP)
    children.append(sleeper)
    sampler = Sampler("h")
    report = sampler.sample(
        [
            vm(None, instance_id="no-pid"),
            vm(sleeper.pid, tap="ledgernotap0", instance_id="no-tap"),
            vm(sleeper.pid, instance_id="fine"),
        ],
        10.0,
    )
    reasons = {u.id: u.reason for u in report.unmeasured}
    assert reasons == {
        "no-pid": "its instance record has no hypervisor_pid",
        "no-tap": "TAP device ledgernotap0 does not exist",
    }
    assert [i.id for i in report.instances] == ["fine"]

    stop(sleeper)
    report = sampler.sample([vm(sleeper.pid, instance_id="fine")], 10.0)
    assert report.instances == ()
    assert report.unmeasured[0].reason == f"hypervisor process {sleeper.pid} is gone"


def _spawn_with_pid(pid: int) -> subprocess.Popen[str] | None:
    """A new process that gets `pid`: the kernel hands out ns_last_pid + 1 next (root only; another fork on
    the machine may win the race, so the caller tries again)."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    child = spawn(SLEEP)
    if child.pid == pid:
        return child
    stop(child)
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="reusing a pid on purpose needs root (ns_last_pid)")
def test_a_reused_pid_is_unmeasured_not_a_burst_of_work(children: list[subprocess.Popen[str]]) -> None:
    first = spawn(SLEEP)
    pid = first.pid
    sampler = Sampler("h")
    only(sampler.sample([vm(pid)], 10.0))
    stop(first)
    second = None
    for _ in range(50):
        second = _spawn_with_pid(pid)
        if second is not None:
            break
    assert second is not None, f"could not get pid {pid} again"
    children.append(second)
    report = sampler.sample([vm(pid)], 10.0)
    assert report.instances == ()
    assert report.unmeasured[0].reason.startswith(f"pid {pid} now belongs to another process")
    # the reused process is the VM's from now on (its record says so): measured again from the next look
    assert only(sampler.sample([vm(pid)], 10.0)).cpu_vcpus is None
