"""Host checks: a folder tree that droppers cannot reach beyond incoming/, and free space.

Anyone who may write into working/, archive/, failed/ or the state directory
could swap a file under a running stage or forge the record, so start-up
refuses such a tree (exit 2) and names the path.  Free space is checked while
running: below ``min_free_space`` the daemon stops claiming (like Postfix's
queue_minfree) and resumes by itself when space returns.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import Config
from .errors import HostError


def _writable_by_others(path: Path) -> str:
    st = os.stat(path, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if st.st_uid not in (0, os.geteuid()):
        # Its owner could chmod it at will.
        return f"owned by uid {st.st_uid}, neither the dropline user nor root"
    who = []
    if st.st_mode & stat.S_IWGRP:
        who.append("its group")
    if st.st_mode & stat.S_IWOTH:
        who.append("everyone")
    return " and ".join(f"writable by {w}" for w in who)


def check_host(config: Config) -> list[str]:
    """Raise HostError for an insecure tree; return notes worth printing."""
    protected = [config.working, config.archive, config.failed, config.state_db.parent]
    for path in protected:
        problem = _writable_by_others(path)
        if problem:
            raise HostError(
                f"{path} is {problem}: only the dropline user may write there "
                f"(chmod g-w,o-w {path})"
            )
    notes = []
    st = os.stat(config.incoming)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        notes.append(f"note: {config.incoming} is writable by everyone")
    return notes


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def free_space_problem(config: Config) -> str:
    """Which folder's filesystem has less than min_free_space free, if any ("" if none)."""
    seen: set[int] = set()
    for label, path in (
        ("incoming/", config.incoming),
        ("working/", config.working),
        ("archive/", config.archive),
        ("failed/", config.failed),
        ("the state directory", config.state_db.parent),
    ):
        try:
            st = os.statvfs(path)
            dev = os.stat(path).st_dev
        except OSError as exc:
            return f"cannot check free space of {path}: {exc.strerror}"
        if dev in seen:
            continue
        seen.add(dev)
        free = st.f_bavail * st.f_frsize
        if free < config.min_free_space:
            return (
                f"{_human(free)} free on the filesystem of {label} ({path}), "
                f"below min_free_space {_human(config.min_free_space)}"
            )
    return ""
