"""Crash and fault injection for the tests of the durability protocol.

The spool, claim, stage, archive and recovery code call ``crashpoint(NAME)``
at each step where a crash would leave a distinct state on disk.  When the
environment variable DROPLINE_CRASH_AT names that step (``NAME`` or
``NAME#N`` for its N-th passage), the process kills itself with SIGKILL there,
as SQLite's crash-test VFS crashes at sync k.  Unset, a crash point costs one
call and one comparison.
"""

from __future__ import annotations

import errno
import os
import signal
import time

# Every step of the protocol, in the order a file meets them.  The tests crash
# at each in turn.
POINTS: tuple[str, ...] = (
    "claim.intent_committed",  # rows say "claiming", nothing renamed yet
    "claim.renamed",  # first file of the batch is in working/, not yet fsynced
    "claim.synced",  # renames durable, rows still say "claiming"
    "claim.committed",  # claim recorded
    "stage.start_committed",  # stage recorded as started, not yet run
    "stage.finished",  # stage ran, its outcome not yet recorded
    "stage.result_committed",  # outcome recorded
    "finish.intent_committed",  # destination recorded, nothing moved
    "finish.error_written",  # failed/NAME.error.json in place, file not yet moved
    "finish.renamed",  # first file of the batch moved, not yet fsynced
    "finish.copied",  # across filesystems: the copy written and fsynced under a temporary name
    "finish.copy_renamed",  # across filesystems: the copy in place, the source not yet removed
    "finish.synced",  # moves durable, rows still say "finishing"
    "finish.committed",  # the end recorded
    "recovery.repaired",  # recovery changed the first item on disk, not yet committed
    "retry.intent_committed",  # `dropline retry`: rows say "requeuing", nothing moved
    "retry.moved",  # the first file is back in working/, not yet fsynced
    "retry.synced",  # files back in working/ and reasons removed, rows still "requeuing"
)


class _Trigger:
    """An environment variable NAME or NAME#N: fires from the N-th passage of NAME on;
    NAME@N: at the N-th passage only."""

    def __init__(self, variable: str) -> None:
        value = os.environ.get(variable, "")
        self.once = "@" in value
        self.name, _, nth = value.replace("@", "#").partition("#")
        self.remaining = int(nth) if nth else 1

    def fires(self, name: str) -> bool:
        if name != self.name:
            return False
        self.remaining -= 1
        return self.remaining == 0 if self.once else self.remaining <= 0


_CRASH = _Trigger("DROPLINE_CRASH_AT")
_FAULT = _Trigger("DROPLINE_FAULT")


_ALSO_KILL: list[int] = []


def crash_together_with(pid: int) -> None:
    """A crash point fired in this (helper) process kills PID first: the daemon."""
    _ALSO_KILL.append(pid)


def crashpoint(name: str) -> None:
    """Kill this process at once if the tests armed the crash point NAME."""
    if _CRASH.fires(name):
        for pid in _ALSO_KILL:
            os.kill(pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


# Faults: DROPLINE_FAULT=NAME (or NAME#N) makes that I/O step fail with EIO, as
# a failing disk would; the daemon must exit non-zero rather than go on.
FAULTS: tuple[str, ...] = ("spool.fsync", "spool.write", "state.commit")
# Not an I/O step: watch.event raises in the inotify callback, so watchdog's reader
# thread dies, and the loop must place a new watch (DROPLINE_FAULT=watch.event@1).
WATCH_FAULT = "watch.event"


def fault(name: str) -> None:
    """Raise OSError(EIO) if the tests armed the fault NAME."""
    if _FAULT.fires(name):
        raise OSError(errno.EIO, f"injected fault at {name}")


# Pauses: DROPLINE_PAUSE_AT=NAME:SECONDS makes the daemon sleep at step NAME each time
# it passes there, holding a race window open (a writer's next step lands inside it)
# that a test would otherwise hit once in hundreds of runs.
PAUSES: tuple[str, ...] = ("intake.look",)  # before a name in incoming/ is looked at
_PAUSE_NAME, _, _pause_for = os.environ.get("DROPLINE_PAUSE_AT", "").partition(":")
_PAUSE_SECONDS = float(_pause_for or 0)


def pausepoint(name: str) -> None:
    """Sleep here if the tests armed the pause NAME."""
    if name == _PAUSE_NAME:
        time.sleep(_PAUSE_SECONDS)
