"""Folders dropped into incoming/ (``tar -x``, ``unzip``, ``cp -r``, ``mkdir`` then writes).

With ``recursive`` on (the default), the files inside are processed like any
other and keep their place: ``incoming/batch/deep/b.csv`` ends as
``archive/DAY/batch/deep/b.csv``.  A folder is noticed by inotify (its
creation or its rename into incoming/) or by a scan of incoming/; its files
are found by a look into it every second while it is there, not by inotify
(one watch per folder would need one per sub-folder, placed before anything
is written into it: a race that a look cannot lose).  So a file in a folder
is "found by a scan": claimed once unchanged for ``settle_time`` and not
held open by a writer, as the contract says of such files.

A folder emptied by its claims is removed once nothing in it has changed
for ``remove_empty_folders_after``: a writer pausing between two files of a
batch finds its folder still there.  rmdir itself refuses a folder that is
not empty, so nothing that arrives meanwhile is lost.

This module decides what to look at and when; the looking (never following
a symlink) is the spool's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .spool import Refusal, Spool

LOOK_EVERY = 1.0  # seconds between looks into the folders in incoming/


@dataclass
class FolderLook:
    """What one look into every known folder found."""

    names: list[bytes] = field(default_factory=list)  # files, relative to incoming/
    refused: list[Refusal] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)  # emptied folders removed


class DroppedFolders:
    """The folders directly in incoming/ whose files are being processed."""

    def __init__(self, skip: Callable[[bytes], bool]) -> None:
        self.skip = skip  # hidden and temporary names: never looked into
        self.known: dict[bytes, None] = {}
        self.next_look = 0.0
        self.unlooked = False  # a folder found since the last look: work not yet seen

    def found(self, name: bytes, mono: float) -> bool:
        """A folder NAME is in incoming/; True if it is new to us."""
        if name in self.known:
            return False
        self.known[name] = None
        self.next_look = mono  # looked into at once
        self.unlooked = True
        return True

    def due(self) -> float | None:
        """When the next look is due; None while there is no folder."""
        return self.next_look if self.known else None

    def look(self, spool: Spool, mono: float, room: int, remove_after: float | None) -> FolderLook:
        """Look into each folder for up to ROOM names; remove those emptied and
        unchanged for REMOVE_AFTER seconds (None: never)."""
        self.next_look = mono + LOOK_EVERY
        self.unlooked = False
        look = FolderLook()
        for folder in list(self.known):
            walk = spool.incoming.walk_folder(folder, self.skip, max(room - len(look.names), 0))
            if walk.gone:  # moved or removed by someone else: nothing to look into
                del self.known[folder]
                continue
            look.names.extend(walk.names)
            look.refused.extend(walk.refused)
            if (
                not walk.names
                and not walk.refused
                and remove_after is not None
                and spool.incoming.remove_empty_folder(folder, remove_after)
            ):
                del self.known[folder]
                look.removed.append(folder)
        return look
