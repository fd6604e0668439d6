"""Discovery test fixtures: host trees from tests/fixtures/hosts made real in a temp dir, and settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.config import Settings, load_settings
from tests.hosttree import HostTree, materialize_host_tree

TESTS = Path(__file__).resolve().parents[1]
HOSTS = TESTS / "fixtures" / "hosts"

MakeSettings = Callable[..., Settings]


@pytest.fixture
def host_tree(tmp_path: Path) -> HostTree:
    """host_tree("h200-vm") → a temp copy of tests/fixtures/hosts/h200-vm with its links made real."""

    def make(name: str) -> Path:
        source = HOSTS / name
        if not source.is_dir():
            raise FileNotFoundError(f"no host tree {name!r} in {HOSTS}")
        return materialize_host_tree(source, tmp_path / "hosts" / name)

    return make


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """make_settings(CPU_LIMIT="8") → Settings from exactly that environment, data dir in tmp."""

    def make(**environ: str) -> Settings:
        return load_settings(environ=environ, flags={"data_dir": str(tmp_path / "data")})

    return make
