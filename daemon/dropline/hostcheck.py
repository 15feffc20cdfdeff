"""Host checks: the folder tree must not let droppers reach beyond incoming/.

Anyone who may write into working/, archive/, failed/ or the state directory
could swap a file under a running stage or forge the record, so start-up
refuses such a tree (exit 2) and names the path.
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
