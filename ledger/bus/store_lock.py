"""One embedded NATS server per store directory.

Two `ledger serve` on one data dir (`make run` typed twice, say) would start two nats-servers on the same
JetStream files, which corrupts them, and the second would overwrite the first's serve.json. An exclusive
lock on a file in the store, held while the server runs, turns that into a clear refusal at start. The
kernel drops the lock when its process dies, so a crash never leaves the directory locked.

Only the ledger process holds it, never the nats-server it starts (the descriptor is close-on-exec): a
server orphaned by a crash must not keep the store locked in its dead owner's name. The next start takes the
free lock and then stops that server (`ledger.bus.embedded.stop_leftover`), so whatever is recorded as
serving a store whose lock one holds has no live owner.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ledger.core.errors import AlreadyRunning

LOCK_FILE = "ledger-embedded.lock"


class StoreLock:
    """An exclusive, non-blocking lock on `<store_dir>/ledger-embedded.lock` naming its holder's pid."""

    def __init__(self, store_dir: Path) -> None:
        self.path = Path(store_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; AlreadyRunning, saying which process holds it and what to do, if another does."""
        if sys.platform == "win32":  # no flock there: the check is skipped
            return
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # see the module docstring
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another ledger serve (pid {holder}) is running its embedded NATS server on "
                f"{self.path.parent}; stop it first, or give this one its own LEDGER_DATA_DIR"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the lock; the file stays (removing it would race a new holder)
