"""One daemon per data folder: a flock on data_dir itself.

The lock on the state directory (``state.db.acquire_lock``) keeps two daemons
off one state database, but two daemons with different ``state_db`` on one
data folder would each take the other's files in working/ for files of its
own: recovery adopts every file in working/ that its database does not
know, and both run the stages on them.  So a daemon also holds a lock on
the data folder, taken before recovery and held (through the mover, which
inherits it) until the last file move of the process is done.

The lock is a flock on a descriptor of the data folder itself, opened
read-only, not on a file in it: there is no file a dropper could delete or
replace, a bind mount or a symbolic link to the folder is the same inode
and so the same lock, and the kernel drops it when the process dies (a
``kill -9`` leaves nothing stale).  Opening a directory read-only needs
read permission on it, which the installed layout (``0751
automation:automation``) gives the daemon and not the droppers, who only
pass through it to incoming/, so no dropper can take or hold it.

Order, everywhere: the state lock first, then the data lock.  Only a daemon
or an offline ``dropline retry`` takes them, and none waits for the state
lock while it holds the data lock, so they never deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from .errors import DataLockedError, HostError


def lock_holder(directory: Path) -> int | None:
    """The pid that holds a flock on DIRECTORY, or None (free, or not visible).

    Read from /proc/locks rather than by trying the lock: a probe that took
    the lock, even for a moment, could make a starting daemon wait for it.
    The pid is the process that took the lock; a lock taken in another pid
    namespace shows none.
    """
    try:
        st = os.stat(directory)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a waiter's line has "->"
        # in the second field, so it never matches).
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                pid = int(fields[4])
                return pid if pid > 0 else None
    return None


def acquire_data_lock(data_dir: Path, state_lock_fd: int, wait: float = 0.0) -> int:
    """flock DATA_DIR; the descriptor, which holds the lock until it is closed.

    STATE_LOCK_FD is the caller's lock on the state directory, taken first.
    When the state database lives in the data folder itself both locks are
    one (a second flock of the same directory in this process would refuse
    itself), so a duplicate of it is returned.  WAIT: how long to keep
    trying, for an offline ``dropline retry`` of another state that holds
    it a moment.  Raises DataLockedError naming the holder's pid if known.
    """
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        held = os.fstat(state_lock_fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            os.close(fd)
            return os.dup(state_lock_fd)  # os.dup: not inheritable, as O_CLOEXEC
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            except OSError as exc:
                # A network filesystem may not lock a directory opened read-only
                # (NFS maps flock to a write lock, EBADF).  Running unlocked would
                # drop the guarantee silently; restarting cannot help (exit 2).
                raise HostError(
                    f"cannot lock the data folder {data_dir} ({exc.strerror}): dropline "
                    "locks data_dir to keep one daemon per data folder; put data_dir on a "
                    "filesystem that supports flock"
                ) from None
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    pid = lock_holder(data_dir)
    who = f"pid {pid}" if pid is not None else "its pid not visible here"
    raise DataLockedError(
        f"another dropline is running on the data folder {data_dir} ({who}, with another "
        "state database): one daemon per data folder; stop it, or give this one a data_dir "
        "of its own"
    )


__all__ = ["acquire_data_lock", "lock_holder"]
