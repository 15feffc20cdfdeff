"""Watching incoming/: inotify events turned into names on the daemon's queue.

Through watchdog's low-level reader (``InotifyFD``), not its observer: the
observer holds every unmatched IN_MOVED_FROM for half a second with later
events queued behind it, and a daemon that moves each file out of the watched
folder produces exactly those.  The reader also tells us of IN_Q_OVERFLOW,
which we turn into a rescan.  inotify is a hint, never the truth: the daemon
places the watch first, then scans, and rescans periodically.

The callbacks only put messages on the queue; all real work happens in the
loop that owns the database.  The reader runs in watchdog's threads, which
can die (an exception in a callback ends them, as a new callback method our
object lacked once did): so the loop also asks ``failure()`` about once a
second, and a watch that ended while incoming/ is still there is replaced.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyFD, Mask

from .crashpoints import WATCH_FAULT, fault

# A file written in place is ready when its writer closes it; one renamed in is
# ready at once.  Creation alone says nothing of a file (the writer is still
# writing) but tells of a folder made in incoming/ (tar, unzip, cp -r).
_MASK = Mask(
    InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_TO
    | InotifyConstants.IN_CREATE
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
class FolderFound:
    """A folder made in, or moved into, incoming/."""

    name: bytes


@dataclass(frozen=True)
class Overflow:
    """The kernel dropped events: rescan."""


@dataclass(frozen=True)
class RescanNeeded:
    """The reader told of something this module does not know: rescan to be sure."""

    reason: str


@dataclass(frozen=True)
class WatchLost:
    """The watch of one generation ended: incoming/ deleted, moved or unmounted,
    or the reader stopped.  The loop tells which by looking at incoming/."""

    reason: str
    generation: int


class _Callback:
    """watchdog's ``WatchCallback`` protocol (7.1: on_event, on_watch_deleted,
    on_queue_overflow, on_events_lost), each turned into a message."""

    def __init__(self, out: queue.SimpleQueue[Any], generation: int) -> None:
        self._out = out
        self._generation = generation

    def on_event(self, event: Any) -> None:
        # The tests make this raise, as a callback watchdog calls and we lack would.
        fault(WATCH_FAULT)
        if event.is_close_write or (event.is_moved_to and not event.is_directory):
            if event.name:
                self._out.put(FileReady(bytes(event.name)))
        elif event.is_create or event.is_moved_to:
            # A file's creation is dropped here: its close or rename tells when it is whole.
            if event.is_directory and event.name:
                self._out.put(FolderFound(bytes(event.name)))
        elif event.is_delete_self or event.is_move_self:
            self._lost("incoming/ was deleted or moved")
        elif event.mask & InotifyConstants.IN_UNMOUNT:
            self._lost("the filesystem of incoming/ was unmounted")

    def on_watch_deleted(self, wd: Any) -> None:
        self._lost("the watch on incoming/ was removed")

    def on_queue_overflow(self) -> None:
        self._out.put(Overflow())

    def on_events_lost(self) -> None:
        # Called once every callback has had on_queue_overflow: the rescan that
        # Overflow asked for is already queued, and the loop runs it after this.
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        # A method a later watchdog adds to the protocol: whatever it tells, a
        # rescan finds what it may have lost, and the loop says so in the journal.
        if not name.startswith("on_"):
            raise AttributeError(name)

        def unknown(*args: Any, **kwargs: Any) -> None:
            self._out.put(RescanNeeded(f"inotify reader called {name}, unknown to dropline"))

        return unknown

    def _lost(self, reason: str) -> None:
        self._out.put(WatchLost(reason, self._generation))


class IncomingWatch:
    """One inotify instance with one watch on incoming/, read by its own thread.

    ``generation`` tags its WatchLost messages: a watch that replaced another
    ignores what the old one says while it is closed.
    """

    def __init__(self, incoming: Path, out: queue.SimpleQueue[Any], generation: int = 1) -> None:
        self.generation = generation
        self._closed = False
        self._inotify = InotifyFD()
        try:
            self._inotify.add_callback(
                os.fsencode(incoming), _MASK, _Callback(out, generation), CallbackId(1)
            )
        except OSError:
            self._inotify.close()
            raise
        self._inotify.start()

    def failure(self) -> str | None:
        """Why the reader no longer reads, or None while it does."""
        if self._closed:
            return None
        error = getattr(self._inotify, "_dispatch_error", None)
        if error is not None:
            return f"the inotify reader failed: {type(error).__name__}: {error}"
        if not self._inotify.is_alive():
            return "the inotify reader thread ended"
        return None

    def close(self) -> None:
        self._closed = True
        # A reader that failed may have closed its descriptors already.
        with contextlib.suppress(OSError):
            self._inotify.stop()
