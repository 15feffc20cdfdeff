"""Is a file held open for writing right now?  Asked of the kernel with a read lease.

``fcntl(fd, F_SETLEASE, F_RDLCK)`` fails with EAGAIN while any process has
the file open for writing (RELIABILITY.md rule 17); granted, it is released
at once with ``F_UNLCK``.  That is evidence, where a close event or a settle
time is only a hint.  It sees the writers that hold the file open now, not
one that will open it again later.

What it takes:
- the file's owner, or CAP_LEASE counted in the initial user namespace
  (the unit grants it and runs with ``PrivateUsers=no``); without it the
  kernel answers EACCES;
- a filesystem that grants leases (most do; some network and FUSE ones
  answer EINVAL, as does ``fs.leases-enable = 0``).
Where a lease is refused, the answer is "cannot tell" (None) and the caller
falls back to timing (close events, ``settle_time``); each kind of refusal
is reported once (``on_refused``).

While the lease is held, a writer's ``open()`` breaks it: the kernel sends
this process SIGIO (the lease-break signal), whose default action ends the
process, and holds the writer's ``open()`` until the lease is released (or
``/proc/sys/fs/lease-break-time``, 45 s by default, has passed).  So SIGIO
is caught (a handler that does nothing: unlike SIG_IGN, a handler is not
inherited by the stages' programs) before any lease is taken, and the lease
is held only for the two system calls of the probe.  Only the daemon's main
process takes leases: the mover and the workers never do, so no lease break
is ever sent to them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)  # Linux's values (fcntl.h)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)

# Test-only hooks, off unless the tests set them (as the crash points are):
# DROPLINE_LEASE_HOLD=SECONDS keeps each lease that long between taking and
# releasing it, so that a test can open the file for writing inside the
# window; DROPLINE_LEASE_REFUSE=EINVAL or EACCES answers every probe as a
# filesystem that refuses leases (or a missing capability) would.
_HOLD = float(os.environ.get("DROPLINE_LEASE_HOLD") or 0)
_REFUSE: int = getattr(errno, os.environ.get("DROPLINE_LEASE_REFUSE") or "_", 0)

_WHY = {
    errno.EINVAL: "the filesystem refuses leases",
    errno.EACCES: "not the file's owner and no CAP_LEASE",
    errno.EPERM: "not permitted",
    errno.ENOLCK: "no lock table space",
}


def _lease_broken(signum: int, frame: FrameType | None) -> None:
    """SIGIO: a writer opened a file while we held its lease; the probe sees it."""


def catch_lease_breaks() -> bool:
    """Make sure a lease break cannot end this process; False if that cannot be done
    here (SIGIO left at its default and this is not the main thread)."""
    current = signal.getsignal(signal.SIGIO)
    if current not in (signal.SIG_DFL, None):
        return True  # a handler (ours, or the caller's), or ignored: never fatal
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGIO, _lease_broken)
    return True


def keep_capabilities_to_ourselves() -> None:
    """Clear the ambient capabilities (CAP_LEASE, granted by the unit): this
    process keeps them, the programs it starts (the mover, the stages) get none."""
    with contextlib.suppress(AttributeError, OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL


class LeaseProbe:
    """Asks whether a file is held open for writing; remembers which refusals it told."""

    def __init__(self, on_refused: Callable[[str], None] | None = None) -> None:
        self.on_refused = on_refused
        self.told: set[int] = set()  # errnos already reported
        self.refusals = 0  # probes answered "cannot tell"
        self._ready: bool | None = None  # SIGIO caught (None: not yet looked)

    def held_open(self, fd: int) -> bool | None:
        """True if a process holds FD's file open for writing now, False if none
        does, None if the kernel will not say (leases refused: fall back).

        FD must be open read-only, by this process, on a regular file.
        """
        if self._ready is None:
            self._ready = catch_lease_breaks()
        if not self._ready:
            self._refused(errno.EPERM, "SIGIO cannot be caught outside the main thread")
            return None
        try:
            if _REFUSE:
                raise OSError(_REFUSE, os.strerror(_REFUSE))
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return True  # a writer holds it open (or a write lease is held)
            self._refused(exc.errno or 0, _WHY.get(exc.errno or 0, exc.strerror or "refused"))
            return None
        try:
            if _HOLD:
                time.sleep(_HOLD)  # tests only: hold the window open
            # A writer that opened it while we held the lease broke it (the lease
            # is then on its way down to F_UNLCK): it is being opened for writing.
            broken = fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_RDLCK
        finally:
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
        return broken

    def _refused(self, err: int, why: str) -> None:
        self.refusals += 1
        if err in self.told:
            return
        self.told.add(err)
        if self.on_refused is not None:
            self.on_refused(f"{why} ({errno.errorcode.get(err, err)})")
