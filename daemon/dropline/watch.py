"""Watching incoming/: inotify events turned into names on the daemon's queue.

Through watchdog's low-level reader (``InotifyFD``), not its observer: the
observer holds every unmatched IN_MOVED_FROM for half a second with later
events queued behind it, and a daemon that moves each file out of the watched
folder produces exactly those.  The reader also tells us of IN_Q_OVERFLOW,
which we turn into a rescan.  inotify is a hint, never the truth: the daemon
places the watch first, then scans, and rescans periodically.

The callbacks only put messages on the queue; all real work happens in the
loop that owns the database.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyFD, Mask

# A file written in place is ready when its writer closes it; one renamed in is
# ready at once.  Creation alone says nothing (the writer is still writing).
_MASK = Mask(
    InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_TO
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_MOVE_SELF
    | InotifyConstants.IN_UNMOUNT
    | 0x01000000  # IN_ONLYDIR: refuse to watch anything but a directory
    | 0x02000000  # IN_DONT_FOLLOW: never through a symlink
)


@dataclass(frozen=True)
class FileReady:
    """A name in incoming/ that inotify says is complete."""

    name: bytes


@dataclass(frozen=True)
class Overflow:
    """The kernel dropped events: rescan."""


@dataclass(frozen=True)
class WatchLost:
    """incoming/ itself was deleted, moved or unmounted."""

    reason: str


class _Callback:
    def __init__(self, out: queue.SimpleQueue[Any]) -> None:
        self._out = out

    def on_event(self, event: Any) -> None:
        if event.is_close_write or event.is_moved_to:
            if event.name:
                self._out.put(FileReady(bytes(event.name)))
        elif event.is_delete_self or event.is_move_self:
            self._out.put(WatchLost("incoming/ was deleted or moved"))
        elif event.mask & InotifyConstants.IN_UNMOUNT:
            self._out.put(WatchLost("the filesystem of incoming/ was unmounted"))

    def on_watch_deleted(self, wd: Any) -> None:
        self._out.put(WatchLost("the watch on incoming/ was removed"))

    def on_queue_overflow(self) -> None:
        self._out.put(Overflow())


class IncomingWatch:
    """One inotify instance with one watch on incoming/, read by its own thread."""

    def __init__(self, incoming: Path, out: queue.SimpleQueue[Any]) -> None:
        self._inotify = InotifyFD()
        try:
            self._inotify.add_callback(os.fsencode(incoming), _MASK, _Callback(out), CallbackId(1))
        except OSError:
            self._inotify.close()
            raise
        self._inotify.start()

    def close(self) -> None:
        self._inotify.stop()
