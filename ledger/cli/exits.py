"""The `ledger` command's exit codes: one table, which `main` maps errors with and docs/cli.md shows (a test
checks that the page carries this table, so the two cannot drift)."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.core.errors import (
    AlreadyRunning,
    ConfigError,
    Conflict,
    InsufficientResources,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unavailable,
    UnknownHost,
)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_ALREADY_RUNNING = 5
EXIT_UNAVAILABLE = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


@dataclass(frozen=True, slots=True)
class ExitCode:
    code: int
    name: str
    meaning: str


TABLE: tuple[ExitCode, ...] = (
    ExitCode(
        EXIT_OK,
        "ok",
        "done; also when what reads the output stopped early (`ledger status` piped into `head`)",
    ),
    ExitCode(
        EXIT_INTERNAL,
        "internal error",
        "a bug: one line names the error and the file holding the traceback (`LEDGER_DEBUG=1` prints it)",
    ),
    ExitCode(
        EXIT_USAGE,
        "usage or configuration",
        "a bad flag, argument, setting, URL or file; a database that does not exist or is not migrated; "
        "an idempotency key reused for a different request",
    ),
    ExitCode(
        EXIT_REFUSED,
        "refused",
        "not enough resources: `validate`, `place`, `fit` or `image-pull-check` said no, and why",
    ),
    ExitCode(EXIT_NOT_FOUND, "not found", "an unknown host, reservation or dead letter"),
    ExitCode(
        EXIT_ALREADY_RUNNING,
        "already running",
        "another `ledger serve` runs the embedded NATS server of this data dir",
    ),
    ExitCode(
        EXIT_UNAVAILABLE,
        "unavailable",
        "the database, NATS or the ledger service cannot be reached (or refused the credentials)",
    ),
    ExitCode(EXIT_INTERRUPTED, "interrupted", "Ctrl-C stopped a command that was waiting"),
)


def exit_code(exc: LedgerError) -> int:
    """The exit code for an error the ledger raised on purpose."""
    if isinstance(exc, ConfigError | InvalidRequest | Conflict):
        return EXIT_USAGE
    if isinstance(exc, InsufficientResources):
        return EXIT_REFUSED
    if isinstance(exc, NotFound | UnknownHost):
        return EXIT_NOT_FOUND
    if isinstance(exc, AlreadyRunning):
        return EXIT_ALREADY_RUNNING
    if isinstance(exc, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_INTERNAL


def markdown_table() -> str:
    """The table as docs/cli.md shows it."""
    lines = ["| Code | Meaning | When |", "|---|---|---|"]
    lines += [f"| {row.code} | {row.name} | {row.meaning} |" for row in TABLE]
    return "\n".join(lines)
