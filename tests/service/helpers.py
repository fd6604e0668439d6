"""Helpers for the service tests: `ledger serve` as a real child process, raw NATS requests, and checks that
a reply is a clean JSON refusal (never a traceback or a Python repr)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
GIB, GB = 2**30, 10**9

# Deterministic capacities: 8 vCPUs (×4 default ratio = 32), 16 GiB, 100 GB disk, 1 Gbps uplink.
LIMITS = {
    "CPU_LIMIT": "8",
    "MEMORY_LIMIT": "16GiB",
    "DISK_LIMIT": "100GB",
    "NETWORK_LIMIT": "1Gbps",
}

# What must never appear in a reply: a traceback or a Python repr leaking through.
LEAKS = ("Traceback", "Error(", "<", "object at 0x", 'File "')


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Any free port for /metrics and the health endpoints: processes running side by side (pytest -n, a
# developer's own `ledger serve`) never fight over the default 9464. serve.json says which port it got.
ANY_METRICS_PORT = "127.0.0.1:0"


def base_env() -> dict[str, str]:
    """This environment without any ledger settings (so the developer's own cannot leak into a test), and
    metrics on any free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "OVERSUB_"))}
    env["LEDGER_METRICS_ADDR"] = ANY_METRICS_PORT
    return env


def serve_env(data_dir: Path, host: str, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update(LIMITS)
    env.update(LEDGER_DATA_DIR=str(data_dir), LEDGER_HOST_ID=host, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class ServeProcess:
    """`python -m ledger serve` in its own data dir; its stderr (the log) goes to `<data_dir>/serve.err`."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.env = dict(env)
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.err"

    @property
    def runtime_path(self) -> Path:
        return self.data_dir / "serve.json"

    @property
    def nats_url(self) -> str:
        return str(self.info["nats_url"])

    @property
    def metrics_url(self) -> str:
        url = self.info.get("metrics_url")
        assert url, f"metrics are off: {self.info}"
        return str(url)

    @property
    def base_url(self) -> str:
        """Where /metrics, /livez, /healthz and /readyz are served."""
        return self.metrics_url.removesuffix("/metrics")

    def get(self, path: str) -> tuple[int, str]:
        """GET one of its HTTP endpoints: the status code and the body."""
        return http_get(self.base_url + path)

    def scrape(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 45.0) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "serve.out", "wb") as out, open(self.log_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: teardown can reach its nats-server too
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ledger serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(self.runtime_path.read_text())
                if info.get("pid") == self.process.pid:
                    self.info = info
                    return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"ledger serve did not write serve.json within {timeout:.0f} s:\n{self.log()}")

    def terminate(self) -> None:
        """Send SIGTERM (the graceful stop) without waiting."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        """Teardown: whatever state it is in, make sure it (and its embedded nats-server) is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        # SIGKILL whatever is left of the group it leads (a hung serve, or the embedded nats-server a
        # killed serve leaves behind); the group id is the serve's own pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait()


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """The status code and body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


# ---- `ledger agent` and its metrics address ------------------------------------------------------------

METRICS_LINE = re.compile(r"metrics on (http://\S+)/metrics")


def start_agent(data_dir: Path, env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`python -m ledger agent` with its log (stderr) in `<data_dir>/agent.err`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "agent.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", "agent", *args],
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def logged_base_url(log_path: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Where a process that logs `metrics on URL/metrics` at start (an agent: it has no serve.json) serves
    its HTTP endpoints."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        found = METRICS_LINE.search(log)
        if found:
            return found.group(1)
        assert process.poll() is None, f"exited with {process.returncode}:\n{log}"
        time.sleep(0.05)
    raise AssertionError(f"no metrics address logged within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


# ---- Prometheus text and PromQL ------------------------------------------------------------------------

PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape's samples: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a scrape (None when there is none with exactly these labels)."""
    return samples(text).get((name, frozenset(labels.items())))


def exported_names(text: str) -> set[str]:
    """Every sample name the scrape's families may carry, samples or not yet (a labelled counter with no
    label values so far still has its HELP and TYPE)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: every identifier that is not a function, an aggregation,
    a keyword, a label name (matchers and grouping lists are removed first) or a $variable."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)
    text = re.sub(r"(?<![\w:])\d[\w.+-]*", " ", text)  # numbers and durations (0.99, 1e3, 5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def run_cli(*args: str, env: Mapping[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def raw(nc: Client, endpoint: str, payload: bytes | Mapping[str, Any], timeout: float = 10.0) -> Msg:
    """One request to ledger.v1.<endpoint> with exactly these bytes."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await nc.request(f"ledger.v1.{endpoint}", data, timeout=timeout)


def reply_of(msg: Msg) -> dict[str, Any]:
    """The reply as a dict, after checking it leaks nothing."""
    text = msg.data.decode()
    for leak in LEAKS:
        assert leak not in text, f"reply leaks {leak!r}: {text}"
    reply = json.loads(text)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), text
    return reply


def refusal_of(msg: Msg, code: str, header_code: str) -> dict[str, Any]:
    """A refusal: ok false, the stable code, a human message, and the micro-protocol error headers."""
    reply = reply_of(msg)
    assert reply["ok"] is False, reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"], reply
    headers = msg.headers or {}
    assert headers.get("Nats-Service-Error-Code") == header_code, headers
    error = headers.get("Nats-Service-Error", "")
    assert error and "\n" not in error, headers
    assert error == reply["message"][:1024], (error, reply["message"])
    for leak in LEAKS:
        assert leak not in error, f"header leaks {leak!r}: {error}"
    return reply


async def gather_replies(nc: Client, subject: str, wait: float = 1.0) -> list[dict[str, Any]]:
    """Every reply to one request sent to `subject` (e.g. `$SRV.PING.ledger`, answered by each replica)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        found: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + wait
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # nats TimeoutError: no more replies
                break
            found.append(json.loads(msg.data))
        return found
    finally:
        await sub.unsubscribe()
