"""No traceback for a user's mistake (issue 17, item 7): one line saying what to fix, and an exit code from
the one table in ledger/cli/exits.py, which docs/cli.md shows."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.cli.completion import walk
from ledger.cli.exits import (
    EXIT_ALREADY_RUNNING,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    TABLE,
    exit_code,
    markdown_table,
)
from ledger.cli.main import build_parser
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
from tests.cli.conftest import Cli, one_line_error

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
DOWN_NATS = "nats://127.0.0.1:1"  # nothing listens on port 1: refused at once
DOWN_DATABASE = "postgresql://ledger:s3cret@127.0.0.1:1/ledger"
NO_DIR = "/nonexistent-ledger-root"

# For each command the parser knows (`ledger` itself included), something wrong to give it and the code
# that must come back. Keyed by the command's words, so a new command fails the test until it is added.
BAD_INPUT: dict[str, tuple[tuple[str, ...], int]] = {
    "ledger": (("nonsense",), EXIT_USAGE),
    "ledger serve": (("serve", "--root", NO_DIR), EXIT_USAGE),
    "ledger agent": (("agent", "--root", NO_DIR), EXIT_USAGE),
    "ledger config": (("config", "--get", "no_such_setting"), EXIT_USAGE),
    "ledger discover": (("discover", "--root", NO_DIR), EXIT_USAGE),
    "ledger host": (("host", "refresh", "--root", NO_DIR), EXIT_USAGE),
    "ledger status": (("status", "--host", "no-such-host"), EXIT_NOT_FOUND),
    "ledger validate": (("validate", "--memory", "10 potatoes"), EXIT_USAGE),
    "ledger release": (("release", "no-such-reservation"), EXIT_NOT_FOUND),
    "ledger fit": (("fit", "--vcpus", "1", "--limit", "0"), EXIT_USAGE),
    "ledger place": (("place", "--vcpus", "100000"), EXIT_REFUSED),
    "ledger defaults": (("defaults", "--vcpus", "-1"), EXIT_USAGE),
    "ledger image-pull-check": (("image-pull-check", "--host", "no-such-host"), EXIT_NOT_FOUND),
    "ledger events": (("events", "nonsense"), EXIT_USAGE),
    "ledger events publish": (("events", "publish", "/nonexistent/events.jsonl"), EXIT_USAGE),
    "ledger events consume": (("events", "consume", "--nats-url", DOWN_NATS), EXIT_UNAVAILABLE),
    "ledger events tail": (("events", "tail", "--nats-url", DOWN_NATS), EXIT_UNAVAILABLE),
    "ledger events dead-letters": (("events", "dead-letters", "show", "999"), EXIT_NOT_FOUND),
    "ledger db": (("db", "upgrade", "nope"), EXIT_USAGE),
    "ledger completion": (("completion", "fish"), EXIT_USAGE),
    "ledger top": (("top", "--host", "no-such-host", "--once"), EXIT_NOT_FOUND),
    "ledger advise": (("advise", "--days", "0"), EXIT_USAGE),
    "ledger reservations": (("reservations", "--status", "lost"), EXIT_USAGE),
}


def the_error(process: subprocess.CompletedProcess[str], code: int) -> str:
    """Failed with `code`, no traceback, and the last line of stderr says what is wrong (argparse's own
    errors are one line too, see ledger.cli.main.Parser)."""
    assert process.returncode == code, (process.returncode, process.stdout, process.stderr)
    assert "Traceback" not in process.stderr + process.stdout
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("ledger")
    return lines[0]


def test_every_command_has_a_bad_input_case() -> None:
    assert {c.path for c in walk(build_parser())} == set(BAD_INPUT)


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_every_command_given_bad_input_says_why_in_one_line_with_the_documented_code(
    ready_cli: Cli, command: str
) -> None:
    args, code = BAD_INPUT[command]
    the_error(ready_cli.run(*args, timeout=60), code)


def test_the_docs_show_the_exit_code_table() -> None:
    assert markdown_table() in DOCS.read_text(encoding="utf-8")
    assert [row.code for row in TABLE] == [0, 1, 2, 3, 4, 5, 6, 130]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError(), EXIT_USAGE),
        (InvalidRequest(), EXIT_USAGE),
        (Conflict(), EXIT_USAGE),
        (InsufficientResources(), EXIT_REFUSED),
        (NotFound(), EXIT_NOT_FOUND),
        (UnknownHost(), EXIT_NOT_FOUND),
        (AlreadyRunning(), EXIT_ALREADY_RUNNING),
        (Unavailable(), EXIT_UNAVAILABLE),
        (LedgerError(), EXIT_INTERNAL),
    ],
)
def test_each_error_class_has_its_exit_code(error: LedgerError, code: int) -> None:
    assert exit_code(error) == code


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("db", "current"),
        ("db", "upgrade"),
        ("host", "list"),
        ("validate", "--vcpus", "1"),
        ("events", "dead-letters", "list"),
    ],
    ids=" ".join,
)
def test_a_database_that_is_down_is_unavailable(cli: Cli, args: tuple[str, ...]) -> None:
    line = the_error(cli.run(*args, "--database-url", DOWN_DATABASE), EXIT_UNAVAILABLE)
    assert "127.0.0.1" in line and "s3cret" not in line


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("validate", "--vcpus", "1"),
        ("release", "x"),
        ("fit", "--vcpus", "1"),
        ("defaults", "--vcpus", "1"),
        ("events", "publish", "-"),
    ],
    ids=" ".join,
)
def test_a_nats_server_that_is_down_is_unavailable(cli: Cli, args: tuple[str, ...]) -> None:
    line = the_error(cli.run(*args, "--nats-url", DOWN_NATS), EXIT_UNAVAILABLE)
    assert "cannot connect to NATS at nats://127.0.0.1:1" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://db/ledger", "unsupported database 'mysql'"),
        ("not a url", "invalid database URL"),
        ("postgresql://db:notaport/ledger", "invalid database URL"),
    ],
)
def test_a_bad_database_url_is_a_usage_error(cli: Cli, url: str, says: str) -> None:
    assert says in the_error(cli.run("status", "--database-url", url), EXIT_USAGE)


@pytest.mark.parametrize(
    "url", ["not a url", "nats://h:notaport", "nats://", "http://[::1", "mysql://db", "nats://u:pw@h:0"]
)
@pytest.mark.parametrize("args", [("status",), ("events", "tail")], ids=" ".join)
def test_a_bad_nats_url_is_a_usage_error(cli: Cli, url: str, args: tuple[str, ...]) -> None:
    line = the_error(cli.run(*args, "--nats-url", url), EXIT_USAGE)
    assert "invalid NATS URL" in line and "expected nats://HOST[:PORT]" in line and ":pw@" not in line


@pytest.mark.parametrize("action", ["upgrade", "downgrade"])
def test_an_unknown_migration_revision_is_a_usage_error_listing_the_known_ones(
    ready_cli: Cli, action: str
) -> None:
    line = the_error(ready_cli.run("db", action, "nope"), EXIT_USAGE)
    assert f"cannot {action} to revision 'nope'" in line and "revisions: base, 0001" in line


def test_a_missing_file_is_a_usage_error_naming_it(ready_cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    line = the_error(
        ready_cli.run("events", "dead-letters", "replay", "1", "--payload", str(missing)), EXIT_USAGE
    )
    assert f"cannot read --payload file {missing}: No such file or directory" in line
    line = the_error(ready_cli.run("config", "--config", str(missing)), EXIT_USAGE)
    assert f"config file {missing} does not exist" in line


@pytest.mark.parametrize(
    "args", [("status",), ("status", "--json"), ("config",), ("completion", "bash")], ids=" ".join
)
def test_a_reader_that_goes_away_ends_the_command_quietly(ready_cli: Cli, args: tuple[str, ...]) -> None:
    """`ledger status | head`: the pipe's reading end is closed before ledger writes a byte."""
    read, write = os.pipe()
    os.close(read)
    try:
        process = ready_cli.popen(*args, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (EXIT_OK, "")


def test_a_real_pipe_into_head(ready_cli: Cli) -> None:
    shell = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m ledger completion bash | head -1"],
        env=ready_cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shell.returncode, shell.stderr) == (0, "")
    assert shell.stdout.startswith("# bash completion for ledger")


async def test_ctrl_c_while_waiting_ends_in_one_line_and_130(cli: Cli, nats_server: EmbeddedNats) -> None:
    """A service that takes the request and never answers: the command waits, and Ctrl-C ends it."""
    asked = threading.Event()

    async def swallow(_msg: Msg) -> None:
        asked.set()

    nc = await connect(nats_server.url, reconnect_forever=False)
    await nc.subscribe("ledger.v1.status", cb=swallow)
    await nc.flush()
    process = cli.popen(  # waiting longer than any test: only the Ctrl-C can end it
        "status",
        "--nats-url",
        nats_server.url,
        env={"LEDGER_REQUEST_TIMEOUT": "600"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            if asked.is_set():
                break
            await asyncio.sleep(0.05)
        assert asked.is_set(), "the command never asked"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        await nc.close()
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert stderr == "ledger: interrupted\n"


BUG = """
import sys
from ledger.cli import config_cmd
from ledger.cli.main import main

def broken(args, settings):
    raise RuntimeError("boom at postgresql://app:hunter2@db/ledger")

config_cmd.run = broken
sys.exit(main(["config"]))
"""


def _run_bug(cli: Cli, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BUG],
        env={**cli.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bug_is_one_line_naming_the_file_that_holds_the_traceback(cli: Cli) -> None:
    done = _run_bug(cli)
    line = one_line_error(done, EXIT_INTERNAL)
    assert line.startswith(
        "ledger: internal error: RuntimeError: boom at postgresql://app:***@db/ledger (a bug;"
    )
    saved = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert saved.parent == Path(cli.env["TMPDIR"])
    assert saved.stat().st_mode & 0o077 == 0, "the traceback file is readable by others"
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text
    assert "hunter2" not in text and "hunter2" not in done.stderr


def test_ledger_debug_prints_the_traceback_instead(cli: Cli) -> None:
    done = _run_bug(cli, LEDGER_DEBUG="1")
    assert done.returncode == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ledger: internal error: RuntimeError: boom at postgresql://app:***@db/ledger"
    )
    assert "hunter2" not in done.stderr
    assert not list(Path(cli.env["TMPDIR"]).glob("ledger-*.traceback"))


def test_a_second_serve_on_one_data_dir_exits_5(ready_cli: Cli) -> None:
    first = ready_cli.popen("serve", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        runtime = ready_cli.data_dir / "serve.json"
        deadline = time.monotonic() + 60
        while not runtime.exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first serve never started"
            time.sleep(0.1)
        second = ready_cli.run("serve", timeout=60)
        line = the_error(second, EXIT_ALREADY_RUNNING)
        assert f"another ledger serve (pid {first.pid})" in line
        assert json.loads(runtime.read_text())["pid"] == first.pid  # the first one is untouched
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
    assert first.returncode == 0


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not json\n", ":1: Expecting value"),
        (b"\n\n[1]\n", ":3: "),
        (b"\n\xff\xfe\n", ":2: 'utf-8' codec can't decode"),
    ],
)
def test_a_bad_events_file_names_the_line(
    cli: Cli, nats_server: EmbeddedNats, tmp_path: Path, content: bytes, says: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(content)
    line = the_error(cli.run("events", "publish", str(events), "--nats-url", nats_server.url), EXIT_USAGE)
    assert f"ledger: {events}{says}" in line
