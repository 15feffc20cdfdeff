"""The spool's working side: the files claimed into working/.

Their listing and lstat, whether a writer still holds one open, their
fingerprint (size, ctime) and their hash read safely, a stage's leftover
temporaries, and the way back to incoming/ for a claim that must be undone.
Never touches the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat

from ..crashpoints import crashpoint
from ..errors import FatalIOError
from ..escaping import quoted
from .dirs import Dirs, Settings
from .durable import FILE_FLAGS, FULL_ERRNOS, exists, rename_noreplace
from .entries import (
    ChangedError,
    Entry,
    HeldOpenError,
    KeptByRuleError,
    Refusal,
    classify,
    entry_in,
)
from .names import WORKING_TEMP_PREFIX, name_candidates

_CHUNK = 1 << 20
_HEAD = 16  # first bytes of a claimed file kept for judge_claimed (SQLite's magic)


class Working:
    """working/: what was claimed, read and hashed, or put back."""

    def __init__(self, dirs: Dirs, settings: Settings) -> None:
        self._dirs = dirs
        self._settings = settings

    def names(self) -> list[bytes]:
        """The names in working/ (bounded by max_in_flight, so a list is fine)."""
        fd = os.dup(self._dirs.working)
        try:
            with os.scandir(fd) as it:
                return [os.fsencode(e.name) for e in it]
        finally:
            os.close(fd)

    def entry(self, name: bytes) -> Entry | Refusal | None:
        """lstat working/NAME; None if it is gone."""
        return entry_in(self._dirs.working, name, self._settings.max_file_size)

    def contains(self, working_name: bytes) -> bool:
        return exists(self._dirs.working, working_name)

    def held_open(self, name: bytes) -> bool | None:
        """Whether a process holds working/NAME open for writing now; None when
        that cannot be told."""
        leases = self._settings.leases
        if leases is None:
            return None
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self._dirs.working)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return leases.held_open(fd)
        finally:
            os.close(fd)

    def remove_temp(self, name: bytes) -> None:
        """Remove a stage's leftover temporary from working/ (never anything else)."""
        if name.startswith(WORKING_TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dirs.working)
                self._dirs.mark(self._dirs.working, "working")

    def fingerprint(self, name: bytes) -> tuple[int, int] | None:
        """(size, ctime) of working/NAME, to see whether anyone changed it.

        ctime, not mtime: the file's owner (a dropper) can set its mtime back,
        but every write moves its ctime, which nobody can set.
        """
        try:
            st = os.stat(name, dir_fd=self._dirs.working, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_ctime_ns

    def hash(
        self, name: bytes, expect: Entry | None = None, *, judge: bool = False
    ) -> tuple[str, int, int]:
        """SHA-256, size and ctime of working/NAME.

        Postfix's safe_open: opened with O_NOFOLLOW|O_NONBLOCK (a symlink fails
        the open, a FIFO opens without blocking), then read only if fstat shows
        a regular file with one link under the limit; ValueError otherwise.
        With EXPECT (what was checked in incoming/) the inode must be that one
        (ValueError: swapped between the check and the rename), and
        ChangedError says the content changed meanwhile: its writer still
        holds it open; HeldOpenError, that a process holds it open for writing
        now (the lease probe, when there is one: after it, no new writer can
        reach the file in working/, so what was read is what stays).  A write
        after the fstat shows here as a size that differs, or later, before a
        stage or the archive move, as a ctime that moved.
        """
        settings = self._settings
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self._dirs.working)
        except FileNotFoundError:
            raise ValueError("gone from working/") from None
        except OSError as exc:
            raise ValueError(f"cannot be opened safely: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            checked = classify(name, st, settings.max_file_size)
            if isinstance(checked, Refusal):
                raise ValueError(checked.reason)
            if expect is not None and (st.st_ino, st.st_dev) != (expect.ino, expect.dev):
                raise ValueError("replaced while being claimed")
            digest = hashlib.sha256()
            size = 0
            head = b""
            # Ask for what fstat saw, plus one byte: a small file costs one small read,
            # and no 1 MiB buffer (malloc would mmap, mremap and munmap it per file).
            want = min(st.st_size + 1, _CHUNK)
            while chunk := os.read(fd, want):
                if not size:
                    head = chunk[:_HEAD]
                digest.update(chunk)
                size += len(chunk)
                if len(chunk) < want:
                    break  # a short read of a regular file is its end: no read() for EOF
                want = _CHUNK
                if settings.reading_tick is not None:
                    settings.reading_tick()  # a file of gigabytes takes seconds
            if expect is not None and (size, st.st_size, st.st_mtime_ns) != (
                expect.size,
                expect.size,
                expect.mtime_ns,
            ):
                raise ChangedError("still being written")
            if expect is not None and settings.leases is not None:
                if settings.leases.held_open(fd):
                    raise HeldOpenError("held open for writing")
                if os.fstat(fd).st_ctime_ns != st.st_ctime_ns:
                    raise ChangedError("written while it was read")
            # JUDGE: a claim from incoming/ (a file kept in working/ is taken already).
            if judge and expect is not None and settings.judge_claimed is not None:
                why = settings.judge_claimed(expect.name, head)
                if why is not None:
                    raise KeptByRuleError(why)
            return digest.hexdigest(), size, st.st_ctime_ns
        finally:
            os.close(fd)

    # --- back to incoming/ ---------------------------------------------------

    def unclaim(self, working_name: bytes, name: bytes) -> bool:
        """Put a claimed entry back as incoming/NAME; False if it cannot go back now.

        False: NAME is taken again in incoming/ (its writer made a new file of
        that name meanwhile: never overwritten) or the filesystem is full; the
        entry is still in working/.  Durable after the next ``sync()``.
        """
        return self._put_back(working_name, name) is True

    def _put_back(self, working_name: bytes, name: bytes) -> bool | None:
        """Rename working/WORKING_NAME to incoming/NAME (its folder made again if it
        went): True once done, False if NAME is taken, None if the disk is full."""
        dirs = self._dirs
        try:
            dir_fd, base = dirs.place(dirs.incoming, name, create=True)
            rename_noreplace(dirs.working, working_name, dir_fd, base)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                return None
            raise FatalIOError(
                f"putting {quoted(working_name)} back into incoming/: {exc}"
            ) from exc
        dirs.mark(dir_fd, dirs.label(dirs.incoming, name))
        dirs.mark(dirs.working, "working")
        crashpoint("claim.put_back")
        return True

    def unclaim_somewhere(self, working_name: bytes, name: bytes, item_id: str) -> bytes | None:
        """Put a claimed entry back into incoming/ under NAME or, if that is taken,
        a unique name (NAME.ITEMID, as in archive/); returns the name it got, or
        None if the filesystem is full (it stays in working/).

        For entries that must not stay in working/ (a symbolic link or a FIFO
        swapped in during the claim: never processed, refused where it came
        from).  Durable after the next ``sync()``.
        """
        for candidate in name_candidates(name, item_id, 0):
            done = self._put_back(working_name, candidate)
            if done is None:
                return None
            if done:
                return candidate
        raise FatalIOError(f"no free name in incoming/ to put {quoted(working_name)} back")
