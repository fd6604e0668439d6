"""Stream replicas: a count a single server cannot hold is a clear configuration error, and only the
stream's owner (`ledger serve`) changes an existing stream; a publisher with other settings leaves it be."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import STREAM, ensure_stream, stream_config
from ledger.core.errors import ConfigError


async def test_three_replicas_on_one_server_is_a_configuration_error(nats_server: EmbeddedNats) -> None:
    nc = Client()
    await nc.connect(nats_server.url)
    try:
        js = nc.jetstream()
        with pytest.raises(ConfigError, match="LEDGER_STREAM_REPLICAS=1") as refused:
            await ensure_stream(js, stream_config(replicas=3))
        assert refused.value.details["setting"] == "stream_replicas"

        await ensure_stream(js, stream_config())
        await ensure_stream(js, stream_config(replicas=3), owner=False)  # a publisher: leaves it as it is
        assert (await js.stream_info(STREAM)).config.num_replicas == 1
        with pytest.raises(ConfigError, match="3 replicas"):
            await ensure_stream(js, stream_config(replicas=3))  # the owner: told why it cannot
    finally:
        await nc.close()
