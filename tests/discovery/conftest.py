"""Fixtures for discovery tests: recorded host trees made real in a temp dir, and settings built from env."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.config import Settings, load_settings
from tests.hosttree import HostTree, materialize_host_tree

TESTS = Path(__file__).resolve().parents[1]
SHARED_HOSTS = TESTS.parents[0] / ".." / "shared" / "fixtures" / "hosts"
OWN_HOSTS = TESTS / "fixtures" / "hosts"

MakeSettings = Callable[..., Settings]


@pytest.fixture
def host_tree(tmp_path: Path) -> HostTree:
    """host_tree("h200-vm") → a temp copy of that tree (shared or ours) with its links made real."""

    def make(name: str) -> Path:
        for base in (OWN_HOSTS, SHARED_HOSTS):
            if (base / name).is_dir():
                return materialize_host_tree(base / name, tmp_path / "hosts" / name)
        raise FileNotFoundError(f"no host tree {name!r} in {OWN_HOSTS} or {SHARED_HOSTS}")

    return make


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """make_settings(CPU_LIMIT="8") → Settings from exactly that environment, data dir in tmp."""

    def make(**environ: str) -> Settings:
        return load_settings(environ=environ, flags={"data_dir": str(tmp_path / "data")})

    return make
