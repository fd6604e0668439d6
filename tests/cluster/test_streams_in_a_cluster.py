"""On a three-node JetStream cluster the events stream keeps three replicas, an R1 stream left by an older
version is raised to three by its owner, and events can still be published with a node down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from ledger.bus.jetstream import STREAM, ensure_stream, stream_config
from ledger.bus.publisher import publish_event
from ledger.events.contract import make_event
from tests.cluster.harness import NatsCluster, stream_leader


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    started = NatsCluster(tmp_path)
    try:
        started.start()
        yield started
    finally:
        started.stop()


async def test_the_owner_raises_the_replicas_and_publishing_survives_a_node(cluster: NatsCluster) -> None:
    await cluster.wait_for_jetstream()
    nc = Client()
    await nc.connect(servers=cluster.client_urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())  # as an older version left it: one replica
        await ensure_stream(js, stream_config(replicas=3), owner=False)
        assert (await js.stream_info(STREAM)).config.num_replicas == 1  # a publisher does not change it
        await ensure_stream(js, stream_config(replicas=3))
        info = await stream_leader(js, STREAM, replicas=3)
        assert info.config.num_replicas == 3
        assert info.cluster is not None

        follower = next(r.name for r in info.cluster.replicas or [])
        cluster.stop_node(follower)
        for n in range(20):  # as every publisher does: retries with the same message id while it reconnects
            record = {"id": f"vm-{n}", "state": "Running", "vcpus": 1}
            await publish_event(js, make_event("instance.created", "h1", record, version=1))
        assert (await js.stream_info(STREAM)).state.messages == 20
    finally:
        await nc.close()
