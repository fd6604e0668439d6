"""What every subcommand shares: settings from flags, output helpers, and mapping errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.config import CONFIG_FILE_ENV, SETTINGS, SETTINGS_BY_KEY, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]

# Exit codes: 0 ok, 1 internal error, 2 usage or configuration error, 3 refused (insufficient resources),
# 4 not found / unknown host, 5 unavailable (database or NATS unreachable).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5

# Settings that every command accepts as a flag (the rest come from environment or the config file).
COMMON_FLAGS = tuple(setting.key for setting in SETTINGS if setting.cli_flag)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--config plus the settings any command may need; all default to None so lower sources show through."""
    group = parser.add_argument_group("configuration (flags beat environment beat --config file)")
    group.add_argument("--config", type=Path, default=None, help=f"TOML config file (env {CONFIG_FILE_ENV})")
    for key in COMMON_FLAGS:
        setting = SETTINGS_BY_KEY[key]
        default = setting.default_doc.replace("`", "")
        text = f"{setting.help} (env {' or '.join(setting.env)}; default: {default})"
        group.add_argument(setting.flag, default=None, help=text.replace("%", "%%"))


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {key: getattr(args, key, None) for key in COMMON_FLAGS}
    return load_settings(flags=flags, config_file=getattr(args, "config", None))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def error(message: str) -> None:
    print(f"ledger: {message}", file=sys.stderr)
