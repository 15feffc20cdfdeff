"""Crash and fault injection for the tests of the durability protocol.

The spool, claim, stage, archive and recovery code call ``crashpoint(NAME)``
at each step where a crash would leave a distinct state on disk.  When the
environment variable DROPLINE_CRASH_AT names that step (``NAME`` or
``NAME#N`` for its N-th passage), the process kills itself with SIGKILL there,
as SQLite's crash-test VFS crashes at sync k.  Unset, a crash point costs one
call and two comparisons.

DROPLINE_DELAY_AT=NAME:SECONDS (or NAME#N:SECONDS, NAME@N:SECONDS) makes the
process wait there instead, for SECONDS or until the file named by
DROPLINE_DELAY_UNTIL exists: a race window held open, so that a test can do
what a writer would do inside it (a file rewritten while it is being claimed).
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
    "claim.put_back",  # a file still being written is back in incoming/, row still "claiming"
    "claim.held",  # one that could not go back (its name taken again) kept in working/
    "claim.committed",  # claim recorded
    "claim.marker",  # ready_marker: the file claimed, its marker not yet removed
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
    "replay.intent_committed",  # `dropline replay`: new rows say "replaying", nothing copied
    "replay.copied",  # the first copy written and fsynced under its temporary name
    "replay.synced",  # copies in working/ and durable, rows still "replaying"
)


class _Trigger:
    """An environment variable NAME or NAME#N: fires from the N-th passage of NAME on;
    NAME@N: at the N-th passage only."""

    def __init__(self, variable: str, value: str | None = None) -> None:
        value = os.environ.get(variable, "") if value is None else value
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
_DELAY_AT, _, _DELAY_SECONDS = os.environ.get("DROPLINE_DELAY_AT", "").partition(":")
_DELAY = _Trigger("DROPLINE_DELAY_AT", _DELAY_AT)


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
    if _DELAY.fires(name):
        _wait_here()


def _wait_here() -> None:
    """DROPLINE_DELAY_AT: wait its seconds, or until DROPLINE_DELAY_UNTIL exists."""
    until = os.environ.get("DROPLINE_DELAY_UNTIL", "")
    deadline = time.monotonic() + float(_DELAY_SECONDS or 0)
    while time.monotonic() < deadline and not (until and os.path.exists(until)):
        time.sleep(0.01)


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


# Steps where a test may only hold a race window open (DROPLINE_DELAY_AT), never
# crash: nothing durable happens there.
PAUSES: tuple[str, ...] = ("intake.look",)  # before a name in incoming/ is looked at


def pausepoint(name: str) -> None:
    """Wait here if DROPLINE_DELAY_AT names the step NAME (every passage, or #N, @N)."""
    if _DELAY.fires(name):
        _wait_here()
