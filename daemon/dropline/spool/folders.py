"""The spool: the four folders of one data directory, opened once, and the three
sides that move files through them.

incoming/ -> working/ -> archive/[DATE/] or failed/ (with NAME.error.json).

``Spool`` composes one ``Dirs`` (``dirs.py``: the descriptors, the folders a
move touched, the batched fsyncs) with the sides that own each part of a file's way:
``Incoming`` (``incoming.py``: looking before a claim), ``Working``
(``working.py``: the claimed file, and putting it back) and ``Ends``
(``ends.py``: archive/ and failed/).  The sides share the descriptors and the
marks of folders to fsync through ``Dirs``, and what the daemon sets
(``Settings``) through one object, so a reload changes it for all of them.

Rules kept here (see RELIABILITY.md):
- every operation is relative to directory descriptors opened once with
  O_DIRECTORY|O_NOFOLLOW; no path from incoming/ is ever followed;
- a rename is durable only once the directories it touched are fsynced;
  callers batch: many renames, then one ``sync()`` (one fsync per directory).

The spool never touches the database.
"""

from __future__ import annotations

from pathlib import Path

from .dirs import Dirs, Settings
from .ends import Ends
from .incoming import Incoming
from .working import Working


class Spool:
    """The four folders of one data directory, opened once, and their three sides."""

    def __init__(self, data_dir: Path, *, max_file_size: int, layout: str = "daily") -> None:
        self.data_dir = data_dir
        self.settings = Settings(max_file_size, layout)
        self.dirs = Dirs(data_dir)
        self.incoming = Incoming(self.dirs, self.settings)
        self.working = Working(self.dirs, self.settings)
        self.ends = Ends(self.dirs, self.settings)

    def sync(self) -> None:
        """fsync every directory changed since the last sync: one fsync each."""
        self.dirs.sync()

    def sync_all(self) -> None:
        """fsync incoming/ and working/ whatever was marked (recovery's first step)."""
        self.dirs.mark(self.dirs.incoming, "incoming")
        self.dirs.mark(self.dirs.working, "working")
        self.dirs.sync()

    def close(self) -> None:
        self.dirs.close()
