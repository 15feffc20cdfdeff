"""What ``dropline status`` says is waiting in incoming/: the files a daemon would
take, the oldest of them, the entries it refuses and the names a writing tool holds.

Read-only and bounded: one scandir per folder, at most so many entries looked at,
so that a huge backlog never makes ``status`` slow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import console as c
from ..config import Config
from ..spool import Refusal, classify
from ..toolnames import Beside, ToolNames

_OLDEST_LIMIT = 10_000  # beyond this many waiting files, the oldest is not looked for
_FOLDER_LIMIT = 100_000  # entries looked at inside folders dropped into incoming/
_SHAPED_LIMIT = 10_000  # names shaped like a tool's looked at, at most


def count_folder(
    path: Path,
    ignored: re.Pattern[str],
    oldest: bool,
    rules: ToolNames | None = None,
    shaped: list[bytes] | None = None,
    others: list[os.DirEntry[str]] | None = None,
) -> tuple[int, float | None]:
    """Entries a daemon would look at (not IGNORED names); the oldest mtime.  Names
    shaped like a tool's (RULES) are added to SHAPED.  With OTHERS, the entries
    that are not regular files go there instead of being counted (one listing)."""
    count = 0
    first: float | None = None
    try:
        with os.scandir(path) as it:
            for entry in it:
                if ignored.match(entry.name):
                    continue
                if others is not None and not entry.is_file(follow_symlinks=False):
                    others.append(entry)
                    continue
                if rules is not None and shaped is not None and len(shaped) < _SHAPED_LIMIT:
                    name = os.fsencode(entry.name)
                    if rules.shaped(name) is not None:
                        shaped.append(name)
                count += 1
                if oldest and count <= _OLDEST_LIMIT:
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                    first = mtime if first is None else min(first, mtime)
    except OSError:
        return 0, None
    return count, (first if count <= _OLDEST_LIMIT else None)


def _in_folders(
    incoming: Path, folders: list[str], ignored: re.Pattern[str]
) -> tuple[int, list[tuple[str, str]]]:
    """Files waiting inside the folders dropped into incoming/ (recursive on), and
    the entries in them that the daemon refuses: (relative name, reason)."""
    count = 0
    refused: list[tuple[str, str]] = []
    looked = 0
    stack = list(folders)
    while stack and looked < _FOLDER_LIMIT:
        folder = stack.pop()
        try:
            with os.scandir(incoming / folder) as it:
                for entry in it:
                    looked += 1
                    if ignored.match(entry.name):
                        continue
                    relative = f"{folder}/{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(relative)
                    elif entry.is_file(follow_symlinks=False):
                        count += 1
                    else:
                        refused.append((relative, _why_refused(entry)))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return count, refused


def _why_refused(entry: os.DirEntry[str]) -> str:
    """Why the daemon refuses an entry that is not a regular file."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return "gone"
    found = classify(os.fsencode(entry.name), st, 1 << 62)
    return found.reason if isinstance(found, Refusal) else "not a regular file"


def look_at_incoming(
    config: Config, ignored: re.Pattern[str], rules: ToolNames, shaped: list[bytes]
) -> tuple[int, float | None, list[tuple[str, str]]]:
    """Files waiting in incoming/ (inside its folders too when ``recursive`` is on),
    the oldest mtime, and the entries refused (symlinks, FIFOs, and folders when
    ``recursive`` is off): refused entries are not waiting."""
    others: list[os.DirEntry[str]] = []
    count, oldest = count_folder(config.incoming, ignored, True, rules, shaped, others)
    refused: list[tuple[str, str]] = []
    folders: list[str] = []
    for entry in others:
        if entry.is_dir(follow_symlinks=False):
            if config.recursive:
                folders.append(entry.name)
            else:
                refused.append(
                    (
                        entry.name,
                        "a folder (recursive is off: only files directly in "
                        "incoming/ are processed)",
                    )
                )
        else:
            refused.append((entry.name, _why_refused(entry)))
    inside, refused_inside = _in_folders(config.incoming, folders, ignored)
    return count + inside, oldest, refused + refused_inside


def held_long(
    config: Config, rules: ToolNames, names: list[bytes], now: float
) -> list[dict[str, Any]]:
    """The names in incoming/ that a rule of tool_files holds and that have not changed
    for longer than its held_warning: what the daemon logs as file.held_long.  NAMES
    are those shaped like a tool's; a database held by its journal is found by it."""
    if not names:
        return []
    try:
        fd = os.open(config.incoming, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    held: dict[bytes, dict[str, Any]] = {}
    try:
        beside = Beside(fd)
        look = []
        for name in names:
            look.append(name)
            base = rules.sqlite_base(name)
            if base is not None:
                look.append(base)
        for name in look:
            st = beside.stat(name)
            if name in held or st is None:
                continue
            age = now - max(st.st_mtime, st.st_ctime)
            hold = rules.hold(name, st.st_size, age, beside)
            if hold is not None and age >= config.tool_files.held_warning:
                held[name] = {
                    "file": c.name(name),
                    "rule": hold.rule,
                    "reason": hold.reason,
                    "unchanged_seconds": round(age, 3),
                }
    finally:
        os.close(fd)
    return sorted(held.values(), key=lambda h: -float(h["unchanged_seconds"]))
