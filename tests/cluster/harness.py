"""A three-node NATS cluster with JetStream on loopback: three real nats-server processes with routes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from ledger.bus.embedded import EmbeddedNats


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsCluster:
    """Nodes `n0`, `n1`, `n2`; `urls` lists the client URLs of those running."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.name = f"ledger-{uuid.uuid4().hex[:6]}"
        routes = [free_port() for _ in range(size)]
        route_urls = ",".join(f"nats://127.0.0.1:{port}" for port in routes)
        self.nodes = [
            EmbeddedNats(
                root / f"n{i}",
                extra_args=[
                    "--server_name",
                    f"n{i}",
                    "--cluster_name",
                    self.name,
                    "--cluster",
                    f"nats://127.0.0.1:{routes[i]}",
                    "--routes",
                    route_urls,
                ],
            )
            for i in range(size)
        ]
        self.client_urls: list[str] = []

    def start(self) -> None:
        self.client_urls = [node.start() for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated, as LEDGER_NATS_URL takes them."""
        return ",".join(self.client_urls)

    def stop_node(self, name: str) -> None:
        self.nodes[int(name.removeprefix("n"))].stop()

    def restart_node(self, name: str) -> None:
        """Start a stopped node again on its store (it rejoins over its routes; its client port is new)."""
        index = int(name.removeprefix("n"))
        self.client_urls[index] = self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def wait_for_jetstream(self, timeout: float = 30.0) -> None:
        """Until the cluster has a JetStream meta leader (a stream can be created)."""
        nc = Client()
        await nc.connect(servers=self.client_urls)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    info = await nc.jetstream().account_info()
                    if info is not None:
                        return
                except Exception:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                await asyncio.sleep(0.2)
        finally:
            await nc.close()


async def stream_leader(
    js: JetStreamContext, stream: str, replicas: int, timeout: float = 30.0
) -> StreamInfo:
    """The stream's info once it has a leader and `replicas - 1` current followers."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await js.stream_info(stream)
        cluster = info.cluster
        followers = [r for r in (cluster.replicas or []) if r.current] if cluster else []
        if cluster is not None and cluster.leader and len(followers) == replicas - 1:
            return info
        assert asyncio.get_running_loop().time() < deadline, f"no leader for {stream}: {cluster}"
        await asyncio.sleep(0.2)
