"""`ledger`: entry point; each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ledger import __version__
from ledger.cli import agent, config_cmd, db, discover, events, fleet, host, reserve, serve, status
from ledger.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Handler,
    add_common_flags,
    error,
    settings_from_args,
)
from ledger.core.errors import (
    ConfigError,
    InsufficientResources,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unavailable,
    UnknownHost,
)

# A command registers itself and returns the parser(s) that take arguments: with nested actions, the leaves
# (argparse lets a subparser's defaults overwrite its parent's values, so shared flags go on leaves only).
Register = Callable[[Any], argparse.ArgumentParser | list[argparse.ArgumentParser]]
COMMANDS: tuple[Register, ...] = (
    serve.register,
    agent.register,
    config_cmd.register,
    discover.register,
    host.register,
    status.register,
    reserve.register_validate,
    reserve.register_release,
    fleet.register_fit,
    fleet.register_place,
    events.register,
    db.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="Host-capacity ledger: track what each host has promised its VMs, "
        "and refuse to promise more than it has.",
    )
    parser.add_argument("--version", action="version", version=f"ledger {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True
    for register in COMMANDS:
        registered = register(subcommands)
        for command in registered if isinstance(registered, list) else [registered]:
            add_common_flags(command)
    return parser


def exit_code(exc: LedgerError) -> int:
    """Map an error to the documented exit code."""
    if isinstance(exc, ConfigError | InvalidRequest):
        return EXIT_USAGE
    if isinstance(exc, InsufficientResources):
        return EXIT_REFUSED
    if isinstance(exc, NotFound | UnknownHost):
        return EXIT_NOT_FOUND
    if isinstance(exc, Unavailable):
        return EXIT_UNAVAILABLE
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, settings_from_args(args))
    except LedgerError as exc:
        error(exc.message)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
