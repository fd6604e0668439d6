"""Fixtures for the service tests: `ledger serve` child processes, always stopped in teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.service.helpers import ServeProcess

ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve_factory() -> Iterator[ServeFactory]:
    """Starts `ledger serve` processes (waiting for serve.json); every one is stopped after the test."""
    started: list[ServeProcess] = []

    def start(data_dir: Path, env: Mapping[str, str], *args: str) -> ServeProcess:
        process = ServeProcess(data_dir, env, tuple(args))
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()
