"""What every subcommand shares: settings from flags, output helpers, and the exit codes (from `exits`).

Nothing here may import SQLAlchemy, nats or the store: `ledger --help` loads this module (see main)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ledger.cli.exits import (
    EXIT_ALREADY_RUNNING,
    EXIT_INTERNAL,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from ledger.config import CONFIG_FILE_ENV, SETTINGS, SETTINGS_BY_KEY, Settings, load_settings, mask_url
from ledger.core.errors import ConfigError

__all__ = [
    "COMMON_FLAGS",
    "EXIT_ALREADY_RUNNING",
    "EXIT_INTERNAL",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "add_common_flags",
    "error",
    "mask_urls",
    "note",
    "one_line",
    "open_input_file",
    "print_json",
    "read_input_file",
    "settings_from_args",
]

if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[[argparse.Namespace, Settings], int]

# Settings that every command accepts as a flag (the rest come from environment or the config file).
COMMON_FLAGS = tuple(setting.key for setting in SETTINGS if setting.cli_flag)

# A URL anywhere in a line of text (up to whitespace or a quote), so its password can be masked.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


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


def mask_urls(text: str) -> str:
    """`text` with the password or token of every URL in it replaced by `***`."""
    return _URL.sub(lambda found: mask_url(found.group(0)), text)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def one_line(text: str) -> str:
    """`text` on one line (a driver's message may span several), with every URL's password masked."""
    return mask_urls(" ".join(text.split()))


def error(message: str) -> None:
    """One line on stderr, `ledger: ` first; a URL's password never reaches the terminal or a log."""
    print(f"ledger: {one_line(message)}", file=sys.stderr)


def note(message: str) -> None:
    """A remark beside the output (stderr, so it never mixes into JSON on stdout)."""
    print(f"ledger: note: {one_line(message)}", file=sys.stderr)


def read_input_file(path: Path, what: str) -> bytes:
    """A file named on the command line; a missing or unreadable one is a usage error naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, exc) from None


def open_input_file(path: Path, what: str) -> BinaryIO:
    """`read_input_file`, for a file read a line at a time."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise _unreadable(path, what, exc) from None


def _unreadable(path: Path, what: str, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}")
