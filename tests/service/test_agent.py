"""`ledger agent` as a real process publishing `host.capacity` to a real NATS: against a running `ledger
serve` (start, SIGHUP, restart), alone with a NATS that is down and comes back, and with bad configuration.

Discovery reads the recorded `cpu-vm` host tree (`--root`), the CPU and network limits come from the agent's
`--config` file, so every capacity is known in advance."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.js.errors import NotFoundError

from ledger.agent import STATE_FILE, Versions
from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import STREAM
from ledger.cli.main import main
from ledger.client import LedgerClient
from ledger.config import ENV_NAMES
from ledger.core.errors import ConfigError, UnknownHost
from ledger.core.resources import ResourceType
from ledger.events import make_event
from tests.hosttree import materialize_host_tree
from tests.service.helpers import REPO, ServeProcess, base_env, serve_env, unique

HOSTS = REPO / "tests" / "fixtures" / "hosts"
CPU_VM_MEMORY = 24683656 * 1024  # MemTotal of the cpu-vm tree
LABELS = {"zone": "a", "rack": "r12"}
GBPS = 125_000_000

T = TypeVar("T")


class AgentProcess:
    """`python -m ledger agent` with its own data dir; its log (stderr) goes to `<data_dir>/agent.err`."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], args: tuple[str, ...]) -> None:
        self.data_dir = data_dir
        self.env = dict(env)
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "agent.err"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def version(self) -> int:
        """The last version the agent handed out, from its state file."""
        return int(json.loads((self.data_dir / STATE_FILE).read_text())["version"])

    def start(self) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger", "agent", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def agent_factory() -> Iterator[AgentFactory]:
    """Starts agents; every one still running is killed after the test."""
    started: list[AgentProcess] = []

    def start(data_dir: Path, env: Mapping[str, str], *args: str) -> AgentProcess:
        agent = AgentProcess(data_dir, env, args)
        started.append(agent)
        return agent.start()

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `ledger serve` (SQLite, embedded NATS) for the tests that look at what the ledger applied."""
    data_dir = tmp_path_factory.mktemp("serve")
    process = ServeProcess(data_dir, serve_env(data_dir, unique("ledger"))).start()
    yield process
    process.kill()


def agent_env(data_dir: Path, host: str, nats_url: str, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update(
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_HOST_ID=host,
        LEDGER_HOST_LABELS=",".join(f"{k}={v}" for k, v in LABELS.items()),
        LEDGER_NATS_URL=nats_url,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def write_config(path: Path, cpu: int) -> Path:
    path.write_text(f'cpu_limit = {cpu}\nnetwork_limit = "1Gbps"\n')
    return path


def cpu_vm(tmp_path: Path) -> Path:
    return materialize_host_tree(HOSTS / "cpu-vm", tmp_path / "cpu-vm")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 15.0) -> T:
    """Poll `probe` until it returns something other than None; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def host_status(client: LedgerClient, host: str, cpu: int, agent: AgentProcess) -> dict[str, Any]:
    """The host's status once the ledger shows `cpu` vCPUs for it."""

    async def probe() -> dict[str, Any] | None:
        assert agent.process is None or agent.process.poll() is None, agent.log()
        try:
            status = (await client.status(host=host)).to_dict()
        except UnknownHost:
            return None
        return status if status["cpu"]["capacity"] == cpu else None

    return await eventually(probe, f"{host} with {cpu} vCPUs\n{agent.log()}")


async def log_line(agent: AgentProcess, text: str, count: int = 1) -> str:
    """The agent's log once it holds `count` lines containing `text`."""

    async def probe() -> str | None:
        log = agent.log()
        return log if log.count(text) >= count else None

    return await eventually(probe, f"{count} x {text!r} in the agent's log\n{agent.log()}")


# ---- with a ledger ----------------------------------------------------------------------------------------


async def test_the_agent_registers_its_host_with_labels_and_capacities_at_start(
    serve: ServeProcess, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    host = unique("agent")
    config = write_config(tmp_path / "agent.toml", cpu=6)
    env = agent_env(tmp_path / "data", host, serve.nats_url)
    agent = agent_factory(tmp_path / "data", env, "--root", str(cpu_vm(tmp_path)), "--config", str(config))
    async with await LedgerClient.connect(serve.nats_url) as client:
        status = await host_status(client, host, 6, agent)
    assert status["labels"] == LABELS
    assert (status["cpu"]["source"], status["cpu"]["effective_limit"]) == ("configured", 24)
    assert (status["memory"]["capacity"], status["memory"]["source"]) == (CPU_VM_MEMORY, "detected")
    assert (status["network"]["capacity"], status["network"]["source"]) == (GBPS, "configured")
    assert status["disk"]["source"] == "detected"  # the agent's own data dir, measured
    assert (status["disk_io"]["capacity"], status["disk_io"]["source"]) == (10**9, "default")


async def test_sighup_applies_a_limit_changed_in_the_config_file(
    serve: ServeProcess, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    host = unique("agent")
    config = write_config(tmp_path / "agent.toml", cpu=6)
    env = agent_env(tmp_path / "data", host, serve.nats_url)
    agent = agent_factory(tmp_path / "data", env, "--root", str(cpu_vm(tmp_path)), "--config", str(config))
    async with await LedgerClient.connect(serve.nats_url) as client:
        await host_status(client, host, 6, agent)
        write_config(config, cpu=12)
        agent.signal(signal.SIGHUP)
        status = await host_status(client, host, 12, agent)
    assert status["cpu"]["effective_limit"] == 48
    assert status["labels"] == LABELS
    assert "configuration reloaded" in agent.log()


async def test_sigterm_exits_0_and_a_restarted_agent_publishes_a_higher_version(
    serve: ServeProcess, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    host = unique("agent")
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "agent.toml", cpu=6)
    args = ("--root", str(cpu_vm(tmp_path)), "--config", str(config))
    env = agent_env(data_dir, host, serve.nats_url)
    async with await LedgerClient.connect(serve.nats_url) as client:
        first = agent_factory(data_dir, env, *args)
        await host_status(client, host, 6, first)
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=5) == 0, first.log()
        assert "stopped" in first.log() and "Traceback" not in first.log()
        before = first.version()

        write_config(config, cpu=7)  # a restart publishes at once; the ledger applies it only if newer
        second = agent_factory(data_dir, env, *args)
        await host_status(client, host, 7, second)
    assert second.version() > before


async def test_a_change_found_by_discovery_is_published_within_the_interval_and_nothing_else_is(
    serve: ServeProcess, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    host = unique("agent")
    root = cpu_vm(tmp_path)
    config = write_config(tmp_path / "agent.toml", cpu=6)
    env = agent_env(tmp_path / "data", host, serve.nats_url, LEDGER_AGENT_INTERVAL="0.1")
    agent = agent_factory(tmp_path / "data", env, "--root", str(root), "--config", str(config))
    async with await LedgerClient.connect(serve.nats_url) as client:
        await host_status(client, host, 6, agent)
        await asyncio.sleep(0.5)  # five unchanged checks: none of them may publish
        meminfo, edited = root / "proc" / "meminfo", root / "proc" / "meminfo.new"
        edited.write_text(meminfo.read_text().replace("24683656 kB", "16777216 kB"))
        edited.replace(meminfo)  # at once: a check must never read half a file

        async def memory_changed() -> bool | None:
            status = (await client.status(host=host)).to_dict()
            return True if status["memory"]["capacity"] == 16 * 2**30 else None

        await eventually(memory_changed, "the new memory size")
    assert agent.log().count("published host.capacity") == 2, agent.log()


async def test_the_agent_samples_its_running_instances_and_the_ledger_shows_what_they_use(
    serve: ServeProcess, agent_factory: AgentFactory, tmp_path: Path, burner: subprocess.Popen[str]
) -> None:
    """The agent has no database: it asks the ledger which instances run here, samples their hypervisors
    and publishes the report; the ledger's status then carries what they really use."""
    host = unique("agent")
    config = write_config(tmp_path / "agent.toml", cpu=6)
    env = agent_env(tmp_path / "data", host, serve.nats_url, LEDGER_USAGE_INTERVAL="0.5")
    agent = agent_factory(tmp_path / "data", env, "--root", str(cpu_vm(tmp_path)), "--config", str(config))
    async with await LedgerClient.connect(serve.nats_url) as client:
        await host_status(client, host, 6, agent)
        record = {"id": "vm-1", "state": "Running", "vcpus": 2, "hypervisor_pid": burner.pid}
        await client.publish_event(make_event("instance.created", host, record, 1))

        async def cpu_used() -> float | None:
            return (await client.status(host=host)).resources[ResourceType.CPU].used

        used = await eventually(cpu_used, f"a usage sample of vm-1\n{agent.log()}", timeout=30)
    assert used > 0  # how much is test_sampler.py's question
    assert "usage sampling skipped" not in agent.log() or "usage sampling is back" in agent.log()


# ---- NATS down and back -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def last_event(url: str, host: str, after: int = -1) -> dict[str, Any]:
    """The newest `host.capacity` of `host` in the stream, once its version is above `after`."""
    nc = await connect(url, reconnect_forever=False)
    js = nc.jetstream()

    async def probe() -> dict[str, Any] | None:
        try:
            msg = await js.get_last_msg(STREAM, f"ledger.events.{host}.host.capacity")
        except NotFoundError:  # no stream yet, or nothing on the subject
            return None
        assert msg.data is not None
        event: dict[str, Any] = json.loads(msg.data)
        return event if event["version"] > after else None

    try:
        return await eventually(probe, f"an event of {host} above version {after}")
    finally:
        await nc.drain()


async def test_an_agent_keeps_retrying_an_unreachable_nats_quietly_and_publishes_when_it_is_back(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    host = unique("agent")
    port = free_port()
    url = f"nats://secret-token@127.0.0.1:{port}"
    config = write_config(tmp_path / "agent.toml", cpu=6)
    env = agent_env(tmp_path / "data", host, url)
    agent = agent_factory(tmp_path / "data", env, "--root", str(cpu_vm(tmp_path)), "--config", str(config))
    await log_line(agent, "NATS is down")
    await asyncio.sleep(2.0)  # attempts at about 0.5, 1 and 2 s: still the one line
    server = EmbeddedNats(tmp_path / "nats", port=port, extra_args=["--auth", "secret-token"])
    server.start()
    try:
        first = await last_event(url, host)
        assert first["data"]["labels"] == LABELS and first["data"]["cpu"]["capacity"] == 6
        await log_line(agent, "is back after")

        server.stop()  # NATS goes away while the agent is idle, and comes back
        await log_line(agent, "NATS is down", count=2)
        server.start()
        agent.signal(signal.SIGHUP)  # publishes even with nothing changed, once connected again
        second = await last_event(url, host, after=first["version"])
        assert second["data"] == first["data"]
        log = await log_line(agent, "is back after", count=2)
    finally:
        server.stop()
    assert log.count("NATS is down") == 2, log
    assert "secret-token" not in log and "nats://***@127.0.0.1" in log
    assert "Traceback" not in log and "ledger.nats" not in log  # nats-py's per-attempt errors stay quiet
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=5) == 0, agent.log()


# ---- bad configuration ------------------------------------------------------------------------------------


# what is wrong → what the one line must say
BAD_CONFIGURATION = {
    "labels": ({"LEDGER_HOST_LABELS": "zone"}, "invalid host_labels from environment LEDGER_HOST_LABELS"),
    "ratio": (
        {"OVERSUB_CPU": "-1"},
        "invalid oversub_cpu from environment OVERSUB_CPU: '-1' must be greater",
    ),
    "missing config": ({"LEDGER_CONFIG": "{tmp}/missing.toml"}, "missing.toml does not exist"),
    "unreadable config": ({"LEDGER_CONFIG": "{tmp}/bad.toml"}, "cannot read config file"),
    "no NATS": ({"LEDGER_NATS_URL": ""}, "set LEDGER_NATS_URL"),
    "data dir": ({"LEDGER_DATA_DIR": "{tmp}/bad.toml"}, "set LEDGER_DATA_DIR to a writable directory"),
    "root": ({"ROOT": "{tmp}/nowhere"}, "nowhere: no such directory"),
}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`ledger agent` run in this process configures the root logger: put pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("setting", "expected"), list(BAD_CONFIGURATION.values()), ids=list(BAD_CONFIGURATION)
)
@pytest.mark.usefixtures("restore_logging")
def test_bad_configuration_exits_2_with_one_line_saying_what_to_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: dict[str, str],
    expected: str,
) -> None:
    (tmp_path / "bad.toml").write_text("cpu_limit = = 4\n")
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    env = agent_env(tmp_path / "data", unique("agent"), "nats://127.0.0.1:1")
    env.update({k: v.format(tmp=tmp_path) for k, v in setting.items()})
    for name in ENV_NAMES & set(env):
        monkeypatch.setenv(name, env[name])
    assert main(["agent", "--root", env.get("ROOT", str(HOSTS / "cpu-vm"))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ledger: ") and expected in lines[0], lines


def test_the_agent_process_with_bad_configuration_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = agent_env(tmp_path / "data", unique("agent"), "nats://127.0.0.1:1", OVERSUB_CPU="-1")
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "agent", "--root", str(HOSTS / "cpu-vm")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "OVERSUB_CPU" in done.stderr and "Traceback" not in done.stderr


# ---- versions, in process ---------------------------------------------------------------------------------


def test_versions_keep_rising_when_the_clock_goes_back(tmp_path: Path) -> None:
    clock = [5_000]
    versions = Versions.open(tmp_path, lambda: clock[0])
    assert versions.next() == 5_000
    clock[0] = 1_000
    assert versions.next() == 5_001
    assert Versions.open(tmp_path, lambda: clock[0]).next() == 5_002  # the state file survives the process
    clock[0] = 9_000
    assert versions.next() == 9_000


def test_a_data_dir_the_agent_cannot_write_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="set LEDGER_DATA_DIR to a writable directory"):
        Versions.open(tmp_path / "file" / "data")
