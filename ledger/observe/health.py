"""Readiness as Kubernetes probes judge it: named checks, each ok or failed with why; ready when all are ok.
The report is the body of /readyz (`[+]name ok` / `[-]name failed: why`, as the Kubernetes API server
writes its own), the status code is the verdict."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

Check = Callable[[], "str | None"]  # None: ok; otherwise what is wrong, in a few words


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    text: str


class Readiness:
    """The checks a process registers as its parts come up; with none yet, it is starting (not ready)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()  # checks are added on the event loop and read by the HTTP threads

    def add(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def report(self) -> Report:
        with self._lock:
            checks = list(self._checks.items())
        if not checks:
            return Report(False, "[-]starting failed: still starting\nreadyz check failed\n")
        lines = []
        ready = True
        for name, check in checks:
            try:
                why = check()
            except Exception as exc:  # a broken check says so instead of taking the endpoint down
                why = f"{type(exc).__name__}: {exc}"
            ready = ready and why is None
            lines.append(f"[+]{name} ok" if why is None else f"[-]{name} failed: {why}")
        lines.append("readyz check passed" if ready else "readyz check failed")
        return Report(ready, "\n".join(lines) + "\n")
