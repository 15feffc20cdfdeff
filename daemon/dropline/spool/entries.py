"""What the spool says of a file: an Entry it may take, or a Refusal and why.

Also the errors a claim's read raises when the file is not what was checked.
Nothing here moves or opens a file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 5x as much to build
class Entry:
    """What lstat said of a regular file in incoming/ or working/."""

    name: bytes
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class ChangedError(ValueError):
    """The file changed while it was being claimed: a writer is still at work."""


class HeldOpenError(ChangedError):
    """A process held the file open for writing when it was claimed."""


class KeptByRuleError(ChangedError):
    """What the claim read says the file must wait (a database with its journal
    beside it): WHY is what the spool's ``judge_claimed`` answered."""

    def __init__(self, why: object) -> None:
        super().__init__("must wait, as a rule of tool_files says")
        self.why = why


@dataclass(frozen=True)
class Refusal:
    """An entry dropline will not touch, and why."""

    name: bytes
    reason: str
    dev: int
    ino: int
    # One word from REFUSAL_KINDS, for counting refusals without the free text.
    kind: str = "other"


REFUSAL_KINDS: tuple[str, ...] = (
    "symlink",
    "fifo",
    "socket",
    "directory",
    "device",
    "hard_link",
    "unreadable",
    "too_large",
    "unwritable_folder",
    "other",
)


def classify(name: bytes, st: os.stat_result, max_size: int) -> Entry | Refusal:
    """Accept only a regular file with one link and a size under the limit."""
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_nlink == 1 and st.st_size <= max_size:
        return Entry(name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    reason = ""
    kind = "other"
    if stat.S_ISLNK(mode):
        reason, kind = "symbolic link (never followed)", "symlink"
    elif stat.S_ISFIFO(mode):
        reason, kind = "FIFO (never opened)", "fifo"
    elif stat.S_ISSOCK(mode):
        reason, kind = "socket", "socket"
    elif stat.S_ISDIR(mode):
        reason, kind = "directory (only files are processed)", "directory"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        reason, kind = "device node (never opened)", "device"
    elif not stat.S_ISREG(mode):
        reason = "not a regular file"
    elif st.st_nlink != 1:
        reason = f"has {st.st_nlink} hard links (only a file with one link is accepted)"
        kind = "hard_link"
    elif st.st_size > max_size:
        reason = f"too large: {st.st_size} bytes, the limit is {max_size}"
        kind = "too_large"
    if reason:
        return Refusal(name, reason, st.st_dev, st.st_ino, kind)
    return Entry(name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_in(dir_fd: int, name: bytes, max_size: int) -> Entry | Refusal | None:
    """lstat DIR/NAME and classify it; None if it is gone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return classify(name, st, max_size)
