"""`ledger serve` joining a NATS that requires credentials: with LEDGER_NATS_USER/PASSWORD (or TOKEN) it
connects and answers; a client without them is refused by NATS itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.client import LedgerClient
from ledger.config import load_settings
from ledger.core.errors import Unavailable
from tests.service.conftest import ServeFactory
from tests.service.helpers import base_env, run_cli, serve_env, unique

AUTHS = {
    "user": (["--user", "u", "--pass", "p"], {"LEDGER_NATS_USER": "u", "LEDGER_NATS_PASSWORD": "p"}),
    "token": (["--auth", "s3cret-token"], {"LEDGER_NATS_TOKEN": "s3cret-token"}),
}


@pytest.fixture(params=sorted(AUTHS))
def auth(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EmbeddedNats, dict[str, str]]]:
    args, credentials = AUTHS[request.param]
    server = EmbeddedNats(tmp_path / "nats-store", extra_args=args)
    server.start()
    assert server.port != 4222
    yield server, credentials
    server.stop()


async def test_serve_with_credentials_and_a_client_without(
    auth: tuple[EmbeddedNats, dict[str, str]], serve_factory: ServeFactory, tmp_path: Path
) -> None:
    server, credentials = auth
    host = unique("auth")
    data_dir = tmp_path / "data"
    env = serve_env(data_dir, host, LEDGER_NATS_URL=server.url, **credentials)
    serve = await asyncio.to_thread(serve_factory, data_dir, env)
    assert serve.nats_url == server.url

    settings = load_settings(environ={**base_env(), **credentials, "LEDGER_DATA_DIR": str(tmp_path / "c")})
    async with await LedgerClient.connect(server.url, settings, reconnect_forever=False) as client:
        assert await client.hosts() == [host]
        grant = await client.validate(vcpus=1)
        assert (await client.release(grant.reservation_id)).status == "released"

    # NATS itself refuses a client without (or with wrong) credentials; a service's connect, which retries
    # an unreachable server for seconds, gives up at once and says what to check
    for options in ({}, {k: "wrong" for k in credentials}):
        wrong = load_settings(environ={**base_env(), **options, "LEDGER_DATA_DIR": str(tmp_path / "w")})
        started = time.monotonic()
        with pytest.raises(Unavailable, match="refused the credentials") as refused:
            await connect(server.url, wrong, reconnect_forever=True)
        assert time.monotonic() - started < 2.0
        assert "wrong" not in str(refused.value)

    # the CLI: refused without credentials (exit 6, unavailable; no traceback), answered with them
    cli_env = {**base_env(), "LEDGER_DATA_DIR": str(tmp_path / "cli")}
    done = await asyncio.to_thread(run_cli, "status", "--json", "--nats-url", server.url, env=cli_env)
    assert done.returncode == 6 and "Traceback" not in done.stderr, done.stderr
    done = await asyncio.to_thread(
        run_cli, "status", "--json", "--nats-url", server.url, env={**cli_env, **credentials}
    )
    assert done.returncode == 0, done.stderr
    assert f'"host": "{host}"' in done.stdout

    assert await asyncio.to_thread(serve.stop) == 0
    assert 'p"' not in serve.log() and "s3cret-token" not in serve.log()  # secrets stay out of the log
    assert "busy_poll_us=0" in serve.log()  # joining a NATS server: callers may be far away, no polling
