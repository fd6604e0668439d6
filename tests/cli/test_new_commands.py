"""What issue 17 adds to the command line (items 10 and 11): `ledger defaults`, `ledger image-pull-check`,
`--vcpus` optional on `validate`, shell completion for bash and zsh, and a start-up that loads nothing a
command does not need."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.cli.completion import walk
from ledger.cli.main import build_parser
from ledger.config import SETTINGS
from ledger.store.ledger import Ledger
from tests.cli.conftest import Cli, ok, one_line_error
from tests.conftest import capacities

GIB = 2**30

# ---- ledger defaults, ledger image-pull-check --------------------------------------------------------


def test_defaults_prints_what_an_instance_is_charged(ready_cli: Cli) -> None:
    out = ok(ready_cli.run("defaults", "--vcpus", "2"))
    # 2 of CPU_LIMIT=4 vCPUs: half of the 10 Gbps link each way, half of the default 1 GB/s disk I/O
    assert out.splitlines() == [
        f"host {ready_cli.host_id}, 2 vCPUs",
        "network download  5.0 Gbps",
        "network upload    5.0 Gbps",
        "disk I/O          500.0 MB/s",
        "disk I/O burst    2.0 GB/s (not charged)",
    ]
    assert json.loads(ok(ready_cli.run("defaults", "--vcpus", "2", "--json"))) == {
        "host": ready_cli.host_id,
        "vcpus": 2,
        "network_download_bps": 625_000_000,
        "network_upload_bps": 625_000_000,
        "disk_io_bps": 500_000_000,
        "disk_io_burst_bps": 2_000_000_000,
    }


def test_image_pull_check_says_it_fits_or_why_not(ready_cli: Cli) -> None:
    assert ok(ready_cli.run("image-pull-check")).startswith(f"an image pull fits on {ready_cli.host_id}: ")
    data = json.loads(ok(ready_cli.run("image-pull-check", "--json")))
    assert set(data) == {"host", "disk_available", "image_storage_bytes", "max_image_storage_bytes"}

    ledger = Ledger.open(ready_cli.settings().database_url, migrate=False)
    ledger.register_host("small", capacities(disk=4 * GIB), {})
    ledger.close()
    line = one_line_error(ready_cli.run("image-pull-check", "--host", "small"), 3)
    assert line == (
        "ledger: insufficient disk space for image pull: 4294967296 bytes available, minimum 5368709120 "
        "bytes required"
    )


# ---- validate without --vcpus ------------------------------------------------------------------------


def test_validate_takes_any_amount_without_vcpus(ready_cli: Cli) -> None:
    held = ok(ready_cli.run("validate", "--memory", "1GiB", "--json"))
    grant = json.loads(held)
    assert (grant["charged"]["vcpus"], grant["charged"]["memory_bytes"]) == (0, GIB)
    assert ok(ready_cli.run("validate", "--disk", "1GB")).strip()


def test_validate_with_no_amount_at_all_is_a_usage_error(ready_cli: Cli) -> None:
    line = one_line_error(ready_cli.run("validate"), 2)
    assert "nothing to reserve: give at least one of --vcpus, --memory" in line


# ---- completion ----------------------------------------------------------------------------------------


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one is the word being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = f"source {script}\nCOMP_WORDS=({quoted})\nCOMP_CWORD={len(words) - 1}\n_ledger\n"
    program += 'printf "%s\\n" "${COMPREPLY[@]}"'
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


def _script(shell: str, path: Path) -> Path:
    path.write_text(
        ok(
            subprocess.run(
                [sys.executable, "-m", "ledger", "completion", shell],
                capture_output=True,
                text=True,
                check=False,
            )
        )
    )
    return path


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _script("bash", tmp_path_factory.mktemp("completion") / "ledger.bash")


@pytest.mark.parametrize(
    ("words", "offered", "not_offered"),
    [
        (("ledger", "st"), {"status"}, {"serve"}),
        (
            ("ledger", ""),
            {"serve", "status", "defaults", "image-pull-check", "completion", "--version"},
            set(),
        ),
        (("ledger", "events", ""), {"publish", "consume", "tail", "dead-letters"}, {"status"}),
        (("ledger", "events", "dead-letters", ""), {"list", "show", "replay", "--json", "--payload"}, set()),
        (("ledger", "events", "dead-letters", "list", ""), {"--json"}, {"list", "show"}),
        (("ledger", "status", "--sort", ""), {"host", "cpu", "disk_io"}, {"--json"}),
        (("ledger", "status", "--"), {"--host", "--all", "--json", "--database-url"}, {"--vcpus"}),
        (("ledger", "db", ""), {"upgrade", "downgrade", "current", "check", "prune"}, set()),
        (("ledger", "completion", ""), {"bash", "zsh"}, set()),
        (("ledger", "validate", "--"), {"--vcpus", "--memory", "--gpu-profile", "--ttl"}, set()),
    ],
)
def test_bash_completes_commands_flags_and_choices(
    bash_script: Path, words: tuple[str, ...], offered: set[str], not_offered: set[str]
) -> None:
    found = set(_bash_complete(bash_script, *words))
    assert offered <= found, found
    assert not (not_offered & found), found


def test_bash_completes_directories_for_root(bash_script: Path, tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hostsfile").write_text("")
    assert _bash_complete(bash_script, "ledger", "discover", "--root", f"{tmp_path}/hos") == [
        f"{tmp_path}/hosts"
    ]


def test_the_script_covers_every_command_of_the_parser(bash_script: Path) -> None:
    text = bash_script.read_text()
    for command in walk(build_parser()):
        assert f'"{command.path}")' in text, command.path


ZSH_STUBS = """
compdef() { : }
compadd() { shift; print -rl -- "$@" }
_files() { print -r -- "(files $*)" }
_message() { print -r -- "(message $*)" }
_describe() { local name=${@[-1]}; print -rl -- ${(P)name} }
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("ledger", ""), "status:show capacity, limits, allocations and pending reservations"),
        (
            ("ledger", "events", "dead-letters", ""),
            "replay:list them (the default), show one's payload, or replay one",
        ),
        (("ledger", "status", "--sort", ""), "disk_io"),
        (("ledger", "serve", "--root", ""), "(files -/)"),
        (("ledger", "status", "--config", ""), "(files )"),
        (("ledger", "status", "--host", ""), "(message value for --host)"),
        (("ledger", "validate", ""), "--vcpus:vCPUs (default 0)"),
        (("ledger", "status", ""), "--nats-url:a NATS server to join"),
    ],
)
def test_zsh_completes_with_descriptions(tmp_path: Path, words: tuple[str, ...], expected: str) -> None:
    script = _script("zsh", tmp_path / "_ledger")
    assert subprocess.run(["zsh", "-n", str(script)], check=False).returncode == 0
    quoted = " ".join(f"'{w}'" for w in words)
    program = f"{ZSH_STUBS}\nsource {script}\nwords=({quoted})\nCURRENT={len(words)}\n_ledger"
    done = subprocess.run(
        ["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    assert expected in done.stdout.splitlines(), done.stdout


# ---- start-up -----------------------------------------------------------------------------------------

HEAVY = ("sqlalchemy", "alembic", "psycopg", "nats", "pyroute2", "psutil", "prometheus_client", "uvloop")
OURS = ("ledger.store", "ledger.bus", "ledger.discovery", "ledger.serve", "ledger.client", "ledger.local")
PROBE = f"""
import json, sys
from ledger.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith({OURS!r}))
print(json.dumps(loaded))
"""


@pytest.mark.parametrize(
    "args", [[*c.path.split()[1:], "--help"] for c in walk(build_parser())], ids=" ".join
)
def test_help_loads_no_database_nats_or_discovery_code(args: list[str]) -> None:
    """What keeps `ledger --help` fast (bench/cli.py measures it): see ledger/cli/main.py."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_db_help_lists_every_retention_setting_with_its_default() -> None:
    """`ledger db prune` takes its retention from settings with no flags: the help must name them."""
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "db", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    retention = [s for s in SETTINGS if s.key.startswith("retention_")]
    assert len(retention) >= 5
    for setting in retention:
        assert f"{setting.env[0]} (default {setting.default:g}):" in help_text, setting.key
    assert "a held reservation is never pruned" in help_text
