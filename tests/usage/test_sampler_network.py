"""Network usage from netlink counters: a veth pair between two namespaces of the test's own stands in for a
VM's TAP device (its host end) and the VM's NIC (the other end); known traffic goes through it both ways."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from ledger.core.results import InstanceUtilizationInfo
from ledger.usage.sampler import Sampler

HOST_SIDE, VM_SIDE = "10.231.0.1", "10.231.0.2"
TAP = "ltap0"
PAYLOAD = 1000
SEND = f"""
import socket, sys
target, count = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    sock.sendto(b"x" * {PAYLOAD}, (target, 9999))
"""
RECEIVE = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 9999))
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    sock.recv(65536)
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creating network namespaces and veth pairs needs root (CAP_NET_ADMIN)"
)


def in_netns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces joined by a veth pair: `host` holds TAP, `vm` the VM's end."""
    from pyroute2 import NetNS, netns  # type: ignore[import-untyped]

    tag = uuid.uuid4().hex[:8]
    host, guest = f"ledger-host-{tag}", f"ledger-vm-{tag}"
    netns.create(host)
    netns.create(guest)
    try:
        with NetNS(host) as ns:
            ns.link("add", ifname=TAP, kind="veth", peer={"ifname": "eth0", "net_ns_fd": guest})
            index = ns.link_lookup(ifname=TAP)[0]
            ns.addr("add", index=index, address=HOST_SIDE, prefixlen=24)
            ns.link("set", index=index, state="up")
        with NetNS(guest) as ns:
            index = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=index, address=VM_SIDE, prefixlen=24)
            ns.link("set", index=index, state="up")
        yield host, guest
    finally:
        netns.remove(host)  # the veth pair goes with its namespace
        netns.remove(guest)


def send(namespace: str, target: str, count: int) -> None:
    subprocess.run(in_netns(namespace, sys.executable, "-c", SEND, target, str(count)), check=True)


def test_tap_traffic_is_reported_from_the_vms_point_of_view(namespaces: tuple[str, str]) -> None:
    host, guest = namespaces
    receivers = [
        subprocess.Popen(in_netns(ns, sys.executable, "-c", RECEIVE, ip), stdout=subprocess.PIPE, text=True)
        for ns, ip in ((host, HOST_SIDE), (guest, VM_SIDE))
    ]
    try:
        for receiver in receivers:
            assert receiver.stdout is not None and receiver.stdout.readline() == "ready\n"
        send(guest, HOST_SIDE, 100)  # warm up: ARP both ways, so neither count below waits on it
        send(host, VM_SIDE, 100)
        sampler = Sampler("h", netns=host)
        vm = InstanceUtilizationInfo("vm-1", "vm-1", os.getpid(), TAP, 1, 2**30)
        before = sampler.sample([vm], 10.0).instances[0]

        send(guest, HOST_SIDE, 3000)  # the VM sends 3 MB ...
        send(host, VM_SIDE, 1000)  # ... and receives 1 MB
        after = sampler.sample([vm], 10.0).instances[0]
    finally:
        for receiver in receivers:
            receiver.kill()
            receiver.wait()
            assert receiver.stdout is not None
            receiver.stdout.close()

    assert before.network_tx_bytes_total is not None and after.network_tx_bytes_total is not None
    assert before.network_rx_bytes_total is not None and after.network_rx_bytes_total is not None
    sent = after.network_tx_bytes_total - before.network_tx_bytes_total
    received = after.network_rx_bytes_total - before.network_rx_bytes_total
    # frames carry 42 bytes of Ethernet, IP and UDP headers on top of each 1,000-byte payload
    assert 3000 * PAYLOAD <= sent <= 3000 * PAYLOAD * 1.1, sent
    assert 1000 * PAYLOAD <= received <= 1000 * PAYLOAD * 1.1, received
    assert after.network_tx_bps is not None and after.network_tx_bps > after.network_rx_bps > 0
