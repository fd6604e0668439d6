"""What every subcommand shares: settings from flags, output helpers, and mapping errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.config import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]

# Exit codes: 0 ok, 1 internal error, 2 usage or configuration error, 3 refused (insufficient resources),
# 4 not found / unknown host, 5 unavailable (database or NATS unreachable).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5

# Settings that every command accepts as a flag (the rest come from environment or the config file).
COMMON_FLAGS = ("data_dir", "database_url", "nats_url", "host_id")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--config plus the settings any command may need; all default to None so lower sources show through."""
    group = parser.add_argument_group("configuration (flags beat environment beat --config file)")
    group.add_argument("--config", type=Path, default=None, help="TOML config file (env LEDGER_CONFIG)")
    group.add_argument("--data-dir", default=None, help="data directory (env LEDGER_DATA_DIR)")
    group.add_argument(
        "--database-url", default=None, help="database URL (env LEDGER_DATABASE_URL; default SQLite)"
    )
    group.add_argument("--nats-url", default=None, help="NATS server URL (env LEDGER_NATS_URL)")
    group.add_argument(
        "--host-id", default=None, help="this host's id (env LEDGER_HOST_ID; default hostname)"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {key: getattr(args, key, None) for key in COMMON_FLAGS}
    return load_settings(flags=flags, config_file=getattr(args, "config", None))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def error(message: str) -> None:
    print(f"ledger: {message}", file=sys.stderr)
