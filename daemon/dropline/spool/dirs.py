"""What the spool's sides share: the descriptors of the data folder and its four
folders (opened once with O_DIRECTORY|O_NOFOLLOW: no path from incoming/ is
ever followed), the folders a move touched and their batched fsyncs (many
renames, then one ``sync()``: one fsync per folder), and the settings the
daemon gives.  Never touches the database.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FatalIOError
from .durable import DIR_FLAGS, exists, fsync_dir, io_error, open_folder, still_named
from .names import OUTSIDE, split_name

if TYPE_CHECKING:
    from ..lease import LeaseProbe

SUBDIRS = ("incoming", "working", "archive", "failed")
# Folders in incoming/ nested deeper than this are refused (a tar bomb of empty folders).
MAX_FOLDER_DEPTH = 32


@dataclass
class Settings:
    """What the daemon sets for every side (a reload changes the first two)."""

    max_file_size: int
    layout: str = "daily"
    # Asks the kernel whether a file is held open for writing (the daemon
    # sets it); None: never asked, timing alone decides.
    leases: LeaseProbe | None = None
    # Asked with (name in incoming/, first bytes) of each file the claim read;
    # an answer that is not None puts the file back (KeptByRuleError).
    judge_claimed: Callable[[bytes, bytes], object | None] | None = None
    # Called while a big file is read (the daemon keeps its watchdog fed).
    reading_tick: Callable[[], None] | None = None


class Dirs:
    """The descriptors of the data folder and its four folders, the day folders of
    archive/ and the sub-folders a move touched; which of them wait for an fsync."""

    def __init__(self, data_dir: Path) -> None:
        self._roots: dict[str, int] = {}
        self._dirty: dict[int, str] = {}
        self._days: dict[str, int] = {}
        # The folders named for duplicates and their day folders, by final folder
        # ("../NAME", "../NAME/DAY"): opened as needed and closed at each sync(), so
        # that one an operator emptied away or renamed is looked up again.
        self._outside: dict[str, int] = {}
        self._retired: list[int] = []  # no longer looked up, closed after the next fsyncs
        # Folders under archive/, failed/ or incoming/ that a move touched (a file
        # dropped in a sub-folder keeps its place): open until sync() fsynced them.
        self._subs: dict[tuple[int, bytes], int] = {}
        try:
            data_fd = os.open(data_dir, DIR_FLAGS)
        except OSError as exc:
            raise FatalIOError(f"cannot open data directory {data_dir}: {exc.strerror}") from exc
        self._roots["data"] = data_fd
        for sub in SUBDIRS:
            try:
                self._roots[sub] = os.open(sub, DIR_FLAGS, dir_fd=data_fd)
            except OSError as exc:
                self.close()
                raise FatalIOError(
                    f"cannot open {data_dir / sub}: {exc.strerror} (it must be a real directory)"
                ) from exc
        self._devs = {fd: os.fstat(fd).st_dev for fd in self._roots.values()}
        self.data = data_fd
        self.incoming = self._roots["incoming"]
        self.working = self._roots["working"]
        self.archive = self._roots["archive"]
        self.failed = self._roots["failed"]

    def close(self) -> None:
        fds = [*self._roots.values(), *self._outside.values(), *self._days.values()]
        for fd in [*fds, *self._subs.values(), *self._retired]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._roots.clear()
        self._outside.clear()
        self._days.clear()
        self._retired.clear()
        self._subs.clear()

    def place(self, root_fd: int, name: bytes, *, create: bool = False) -> tuple[int, bytes]:
        """(folder descriptor, base name) of NAME under ROOT_FD: ROOT_FD itself for a
        plain name, else its sub-folder (made if CREATE), open until the next sync()."""
        folder, base = split_name(name)
        if not folder:
            return root_fd, name
        key = (root_fd, folder)
        fd = self._subs.get(key)
        if fd is None:
            fd = open_folder(root_fd, folder, 0o750 if create else None)
            self._subs[key] = fd
            self._devs[fd] = os.fstat(fd).st_dev
        return fd, base

    def label(self, root_fd: int, name: bytes) -> str:
        """The folder of NAME for messages: "failed", "archive/2026-12-06/batch", ..."""
        root = next((k for k, v in self._roots.items() if v == root_fd), "")
        outside = next((k for k, v in self._outside.items() if v == root_fd), "")
        if outside:
            root = outside.removeprefix(OUTSIDE)
        elif not root:
            root = "archive/" + next((k for k, v in self._days.items() if v == root_fd), "")
        folder = split_name(name)[0]
        return f"{root}/{os.fsdecode(folder)}" if folder else root

    def exists_at(self, root_fd: int, name: bytes) -> bool:
        """Whether NAME (maybe in a sub-folder) exists under ROOT_FD."""
        folder, base = split_name(name)
        if not folder:
            return exists(root_fd, name)
        try:
            dir_fd = open_folder(root_fd, folder)
        except FileNotFoundError:
            return False
        try:
            return exists(dir_fd, base)
        finally:
            os.close(dir_fd)

    def dev(self, fd: int) -> int:
        """The filesystem FD is on (asked once per descriptor)."""
        dev = self._devs.get(fd)
        if dev is None:
            dev = self._devs[fd] = os.fstat(fd).st_dev
        return dev

    def archive_dir(self, subdir: str, *, create: bool) -> int | None:
        """archive/ or its folder SUBDIR (a day), made if CREATE; None if it is not
        there.  SUBDIR "../NAME[/DAY]": the folder NAME of the data folder (OUTSIDE)."""
        if not subdir:
            return self.archive
        if subdir.startswith(OUTSIDE):
            return self._outside_dir(subdir, create)
        fd = self._days.get(subdir)
        if fd is not None:
            if still_named(self.archive, subdir, fd):
                return fd
            self.forget_day(subdir)  # removed or moved away by hand: made again below
        fd = self._open_made(self.archive, subdir, "archive/", create)
        if fd is None:
            return None
        # Keep a few day folders open; old days are closed as new ones come.  A
        # folder still waiting for its fsync stays open, and so does one whose
        # sub-folders are (they are known by its descriptor until the sync).
        for old in sorted(self._days)[:-3]:
            if not self._busy(self._days[old]):
                old_fd = self._days.pop(old)
                self._devs.pop(old_fd, None)
                os.close(old_fd)
        self._days[subdir] = fd
        return fd

    def outside(self, name: str, *, create: bool) -> int | None:
        """The folder NAME of the data folder (named for duplicates), made if CREATE."""
        return self._outside_dir(OUTSIDE + name, create)

    def _outside_dir(self, subdir: str, create: bool) -> int | None:
        """The folder "../NAME[/DAY]" (``archive_dir``), open until the next sync()."""
        name, _, day = subdir.removeprefix(OUTSIDE).partition("/")
        if day:
            parent = self._outside_dir(OUTSIDE + name, create)  # itself looked at first
            if parent is None:
                return None
            where, label = (parent, day), name + "/"
        else:
            where, label = (self.data, name), "the data folder"
        fd = self._outside.get(subdir)
        if fd is not None:
            if still_named(*where, fd):
                return fd
            self.forget_day(subdir)  # emptied away or renamed by hand since
        fd = self._open_made(*where, label, create)
        if fd is not None:
            self._outside[subdir] = fd
        return fd

    def _open_made(self, parent: int, name: str, parent_label: str, create: bool) -> int | None:
        """Open the folder PARENT/NAME (never through a symbolic link), made durably
        if CREATE; None if it is not there."""
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:  # a symbolic link (or a file) in its place
            raise io_error(f"cannot open {name} in {parent_label}", exc) from exc
        try:
            os.mkdir(name, 0o750, dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:
            raise io_error(f"cannot create {name} in {parent_label}", exc) from exc
        # Durable at once (once a day): a file copied in from another
        # filesystem has its source removed before the batch's sync.
        fsync_dir(parent, parent_label)
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise io_error(f"cannot open {name} in {parent_label}", exc) from exc

    def forget_day(self, day: str) -> None:
        """Stop using the day folder DAY (it is about to be removed, or it was): closed
        now, or at the next sync() if it waits for its fsync."""
        old = (self._outside if day.startswith(OUTSIDE) else self._days).pop(day, None)
        if old is None:
            return
        if self._busy(old):
            self._retired.append(old)
        else:
            self._devs.pop(old, None)
            os.close(old)

    def _busy(self, fd: int) -> bool:
        """Whether FD waits for its fsync, or sub-folders are known by it till then."""
        return fd in self._dirty or any(parent == fd for parent, _ in self._subs)

    def mark(self, fd: int, label: str) -> None:
        self._dirty[fd] = label

    def sync(self) -> None:
        """fsync every directory changed since the last sync: one fsync each."""
        dirty, self._dirty = self._dirty, {}
        # The day folder before archive/: the folder must be durable before its entry.
        for fd, label in sorted(dirty.items(), key=lambda kv: kv[1].count("/"), reverse=True):
            fsync_dir(fd, label)
        for fd in [*self._subs.values(), *self._outside.values(), *self._retired]:
            self._devs.pop(fd, None)
            os.close(fd)
        self._subs.clear()
        self._outside.clear()
        self._retired.clear()


def list_folder(fd: int) -> list[tuple[bytes, bool]]:
    """(name, is a folder) of each entry; d_type only, never a stat or a follow."""
    listing = os.dup(fd)
    try:
        with os.scandir(listing) as it:
            return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(listing)


def remove_if_empty(parent: int, name: bytes, quiet: float, now: float, depth: int) -> bool:
    """rmdir PARENT/NAME and its empty folders, if it has not changed for QUIET
    seconds; True once it is gone (or was not there)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        return exc.errno == errno.ENOENT
    try:
        st = os.fstat(fd)
        # Judged before its own empty folders go: removing them changes its times.
        was_quiet = now - max(st.st_mtime, st.st_ctime) >= quiet
        if depth < MAX_FOLDER_DEPTH:
            for child, is_dir in list_folder(fd):
                if is_dir:
                    remove_if_empty(fd, child, quiet, now, depth + 1)
    finally:
        os.close(fd)
    if not was_quiet:
        return False
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError:
        return False  # not empty (a file came, or one dropline does not take)
    # Not made durable: after a crash an empty folder is back and goes again.
    return True
