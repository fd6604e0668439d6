"""`ledger`: entry point; each subcommand lives in its own module and registers itself here.

Start-up is kept short (`ledger --help` well under 0.3 s, see bench/cli.py): the command modules import only
the configuration and the pure core at load time, and what a command needs (SQLAlchemy, nats, the store)
when it runs. tests/cli/test_new_commands.py checks that `--help` loads none of it.

Whatever goes wrong ends in one line on stderr and an exit code from `ledger.cli.exits` (docs/cli.md): the
ledger's own errors by their class; a reader that stops reading (`ledger status | head`) quietly, exit 0;
Ctrl-C, 130; anything else is a bug: exit 1, with the traceback in a file the line names (or on stderr with
LEDGER_DEBUG=1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ledger import __version__
from ledger.cli import (
    agent,
    checks,
    completion,
    config_cmd,
    db,
    discover,
    events,
    fleet,
    host,
    reservations,
    reserve,
    serve,
    status,
    usage,
)
from ledger.cli.common import add_common_flags, error, mask_urls, settings_from_args
from ledger.cli.exits import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code,
)
from ledger.core.errors import LedgerError

if TYPE_CHECKING:
    from ledger.cli.common import Handler

DEBUG_ENV = "LEDGER_DEBUG"  # 1: print an internal error's traceback instead of saving it to a file

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
    usage.register_top,
    usage.register_advise,
    reserve.register_validate,
    reserve.register_release,
    reservations.register,
    fleet.register_fit,
    fleet.register_place,
    checks.register_defaults,
    checks.register_image_pull_check,
    events.register,
    db.register,
    completion.register,
)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line that points at --help (the usage itself can run to a dozen
    lines); every subcommand's parser is one of these too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ledger",
        description="Host-capacity ledger: track what each host has promised its VMs, "
        "and refuse to promise more than it has. Exit codes: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"ledger {__version__}")
    parser.set_defaults(root_parser=parser)  # for commands that describe the command line (completion)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True
    for register in COMMANDS:
        registered = register(subcommands)
        for command in registered if isinstance(registered, list) else [registered]:
            add_common_flags(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler: Handler = args.handler
        code = handler(args, settings_from_args(args))
        sys.stdout.flush()  # here, not at exit: a closed pipe must be handled like any other error
        return code
    except LedgerError as exc:
        error(exc.message)
        return exit_code(exc)
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        database = _database_error(exc)
        if database is not None:
            error(database)
            return EXIT_UNAVAILABLE
        error(_internal_error(exc))
        return EXIT_INTERNAL


def _discard_stdout() -> None:
    """The reader went away: send what is still buffered nowhere, so the exit does not fail on it again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (embedded use)
        pass


def _database_error(exc: Exception) -> str | None:
    """A database that went away in a place that does not map it to Unavailable itself, as one line."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    return f"database unavailable: {str(getattr(exc, 'orig', None) or exc).strip()}"


def _internal_error(exc: Exception) -> str:
    """One line for a bug, and where its traceback is (stderr with LEDGER_DEBUG=1, else a private file)."""
    summary = f"internal error: {type(exc).__name__}: {exc}".strip().rstrip(":")
    text = mask_urls("".join(traceback.format_exception(exc)))
    if os.environ.get(DEBUG_ENV, "") not in {"", "0"}:
        sys.stderr.write(text)
        return summary
    try:
        fd, name = tempfile.mkstemp(prefix=f"ledger-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".traceback")
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: readable by this user only
            file.write(text)
    except OSError:
        return f"{summary} (set {DEBUG_ENV}=1 to see the traceback)"
    return f"{summary} (a bug; the traceback is in {Path(name)}; {DEBUG_ENV}=1 prints it here)"


if __name__ == "__main__":
    sys.exit(main())
