"""The README's commands work as written: the second-terminal demo runs against a real `ledger serve`.

`make run` and `make test` themselves are checked by CI (`.ci/run` calls `make test`) and by the fresh-clone
check before each release; here `make run`'s job (`ledger serve` on the embedded default) is started directly.
"""

from __future__ import annotations

import json
import os
import re
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
