"""Turn a recorded host tree (links stored as `NAME.link` text files) into a real tree with symlinks.

Git and the fixture snapshots keep links as text so they survive any checkout; discovery reads real
symlinks (`driver`, `virtfn0`, ...) with readlink, so tests copy a tree and restore the links first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

LINK_SUFFIX = ".link"
SELF_LINK_SUFFIX = ".self.link"

# The `host_tree` fixture: a tree's name ("h200-vm") → its materialized copy.
HostTree = Callable[[str], Path]


def materialize_host_tree(source: Path, dest: Path) -> Path:
    """Copy `source` to `dest`, then turn each `NAME.link` into a symlink `NAME`; returns `dest`.

    `NAME.self.link` records that the folder `NAME` was itself a link (as /sys/class/net/IF is on a host):
    the folder moves to where the link pointed and `NAME` becomes that link, as on the host.
    """
    shutil.copytree(source, dest, symlinks=True)
    for marker in sorted(dest.rglob("*" + SELF_LINK_SUFFIX)):
        _relocate_folder(marker, dest.resolve())
    for marker in sorted(dest.rglob("*" + LINK_SUFFIX)):
        _make_link(marker, marker.with_name(marker.name.removesuffix(LINK_SUFFIX)))
    return dest


def _link_target(marker: Path) -> str:
    return marker.read_text(encoding="utf-8").strip()


def _make_link(marker: Path, link: Path) -> None:
    target = _link_target(marker)
    marker.unlink()
    os.symlink(target, link)


def _relocate_folder(marker: Path, top: Path) -> None:
    link = marker.with_name(marker.name.removesuffix(SELF_LINK_SUFFIX))
    target = _link_target(marker)
    destination = (link.parent / target).resolve()
    if not link.is_dir() or link.is_symlink() or not destination.is_relative_to(top):
        marker.unlink()  # nothing to move, or the target would leave the tree: keep the plain folder
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(link, destination)
    _make_link(marker, link)
