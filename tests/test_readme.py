"""The README's commands work as written: the second-terminal demo runs against a real `ledger serve`.

`make run` and `make test` themselves are checked by CI (`.ci/run` calls `make test`) and by the fresh-clone
check before each release; here `make run`'s job (`ledger serve` on the embedded default) is started directly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


def _blocks() -> list[list[str]]:
    return [
        [line for line in block.strip().splitlines() if line.strip()]
        for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    ]


def test_the_first_two_commands_are_make_run_and_make_test() -> None:
    first, second = _blocks()[:2]
    assert first[0].split("#")[0].strip() == "make run"
    assert second[0].split("#")[0].strip() == "make test"
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/ledger serve" in makefile
    assert "-m pytest" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "OVERSUB_"))}
    env.update(
        LEDGER_DATA_DIR=str(tmp_path / "data"),
        LEDGER_HOST_ID=f"readme-{os.getpid()}",
        CPU_LIMIT="2",
        LEDGER_METRICS_ADDR="127.0.0.1:0",  # any free port: parallel tests never fight over 9464
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    runtime = tmp_path / "data" / "serve.json"
    deadline = time.monotonic() + 60
    while not runtime.exists():
        assert serve.poll() is None, serve.stderr.read().decode() if serve.stderr else ""
        assert time.monotonic() < deadline, "ledger serve did not start"
        time.sleep(0.1)
    yield env
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0
    if serve.stderr:
        serve.stderr.close()


def _run(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_the_second_terminal_demo_runs_as_written(demo_env: dict[str, str]) -> None:
    demo = _blocks()[2]
    assert demo[0] == ". .venv/bin/activate"  # the test runs in the venv it was installed in
    publish, status, grant, refusal = demo[1:]

    published = _run(publish, demo_env)
    assert published.returncode == 0, published.stderr
    assert "published 8 events" in published.stdout

    deadline = time.monotonic() + 30
    while True:  # the service applies the events asynchronously
        shown = _run("ledger status --json", demo_env)
        if len(json.loads(shown.stdout)["allocations"]) == 2:
            break
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.2)

    table = _run(status, demo_env)
    assert table.returncode == 0, table.stderr
    assert re.search(r"cpu\s+\[#+", table.stdout)  # the usage bar shows the two VMs' 3 vCPUs
    assert "web" in table.stdout and "db" in table.stdout

    granted = _run(grant, demo_env)
    assert granted.returncode == 0, granted.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", granted.stdout)

    refused = _run(refusal, demo_env)
    assert refused.returncode == 3
    assert refused.stderr.startswith("ledger: insufficient CPU: requested 10000 vCPUs, but only 4 available")
    assert "Traceback" not in refused.stderr


def test_the_usage_demo_runs_as_written(demo_env: dict[str, str]) -> None:
    """busy-vm.py records a core-burning process as a Running VM; `ledger top` shows it used (polled here
    with --once --json instead of watched); `kill %1` (SIGTERM) deletes it again."""
    start, watch, stop = (line.split("#")[0].strip() for line in _blocks()[3])
    assert (start, watch, stop) == ("python docs/examples/busy-vm.py &", "ledger top", "kill %1; wait")
    vm = subprocess.Popen(
        shlex.split(start.removesuffix("&")), env=demo_env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert vm.stdout is not None and vm.stdout.readline().startswith("vm-busy is Running")
        deadline = time.monotonic() + 90  # two sampling rounds of 10 s, on a busy machine
        while True:
            rows = json.loads(_run(f"{watch} --once --json", demo_env).stdout)
            busy = [row for row in rows if row["instance_id"] == "vm-busy"]
            if busy and busy[0]["cpu_vcpus"] is not None:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
        assert busy[0]["allocated_vcpus"] == 1 and busy[0]["cpu_vcpus"] > 0
        table = _run(f"{watch} --once", demo_env).stdout
        assert re.search(r"^busy\s+1\s+\d+\.\d\d", table, re.MULTILINE), table
    finally:
        vm.send_signal(signal.SIGTERM)  # what `kill %1` sends
        assert vm.wait(timeout=30) == 0
        if vm.stdout is not None:
            vm.stdout.close()

    deadline = time.monotonic() + 30
    while True:  # busy-vm.py deleted its instance on the way out
        shown = json.loads(_run("ledger status --json", demo_env).stdout)
        if all(a["instance_id"] != "vm-busy" for a in shown["allocations"]):
            break
        assert time.monotonic() < deadline, shown["allocations"]
        time.sleep(0.2)
