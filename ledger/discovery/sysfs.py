"""Small, forgiving readers for /proc and /sys files under a root, so fixture trees and hosts read alike.

Kernel pseudo-files fail in odd ways (EINVAL on a down link's `speed`, ENODEV on a vanished device), so every
helper answers None instead of raising: a reader turns None into an `undetected` capacity with a hint.
"""

from __future__ import annotations

import os
from pathlib import Path

REAL_ROOT = Path("/")


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as on a host) inside `root`: under(Path("/tmp/h"), "/proc/meminfo")."""
    return root / path.lstrip("/")


def is_real_root(root: Path) -> bool:
    """Whether `root` is this machine's own `/`, where live kernel APIs (netlink, affinity) also apply."""
    try:
        return root.resolve() == REAL_ROOT
    except OSError:
        return False


def read_text(path: Path) -> str | None:
    """The file's stripped text, or None if it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return None


def read_int(path: Path, base: int = 10) -> int | None:
    """The file's content as an integer (base 16 accepts a `0x` prefix), or None."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def link_name(path: Path) -> str | None:
    """The last component of a symlink's target (a driver's or device's name), or None if not a link.

    Uses readlink rather than resolve: in a copied tree the target usually does not exist.
    """
    try:
        return Path(os.readlink(path)).name
    except OSError:
        return None
