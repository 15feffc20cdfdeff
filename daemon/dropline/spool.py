"""The spool: where every file is moved durably (the mover process, ``mover.py``,
does a batch's renames with the functions here).

incoming/ -> working/ -> archive/[DATE/] or failed/ (with NAME.error.json).

Rules kept here (see RELIABILITY.md):
- every operation is relative to directory descriptors opened once with
  O_DIRECTORY|O_NOFOLLOW; no path from incoming/ is ever followed;
- a rename never overwrites (renameat2 with RENAME_NOREPLACE);
- a rename is durable only once the directories it touched are fsynced;
  callers batch: many renames, then one ``sync()`` (one fsync per directory);
- an entry in incoming/ is claimed only if lstat shows a regular file; a
  claimed file is opened with O_NOFOLLOW|O_NONBLOCK and read only if fstat
  still shows that regular file, so a FIFO is never opened blocking;
- a move to another filesystem (archive/ on its own mount) is a copy under a
  temporary name, fsync, rename into place, fsync, then unlink of the source:
  never a half file under the final name;
- a full filesystem raises DiskFullError (nothing happened; try again later);
  any other write or fsync error raises FatalIOError: the state on disk is
  unknown.

This module never touches the database.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .crashpoints import crashpoint, fault
from .errors import DiskFullError, FatalIOError
from .lease import LeaseProbe

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_RENAME_NOREPLACE = 1
_NAME_MAX = 255
_ERROR_SUFFIX = b".error.json"
_CHUNK = 1 << 20
_HEAD = 16  # first bytes of a claimed file kept for judge_claimed (SQLite's magic)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a full filesystem or quota: not fatal
SUBDIRS = ("incoming", "working", "archive", "failed")
# Temporaries a stage writes in working/ before renaming them over its file
# (transform with archive: transformed); never a dropped file.
WORKING_TEMP_PREFIX = b".dropline-tmp-"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Folders in incoming/ nested deeper than this are refused (a tar bomb of empty folders).
MAX_FOLDER_DEPTH = 32

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2: Any = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.restype = ctypes.c_int


def rename_noreplace(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    """Rename SRC to DST atomically, failing with FileExistsError if DST exists."""
    if _renameat2 is not None:
        if _renameat2(src_dir, src, dst_dir, dst, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), os.fsdecode(src))
    # The filesystem cannot refuse for us.  Only dropline writes into the target
    # directories, so a check right before the rename is not racy there.
    if _exists(dst_dir, dst):
        raise FileExistsError(errno.EEXIST, "target exists", os.fsdecode(dst))
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def fsync_dir(fd: int, label: str) -> None:
    """fsync a directory; an error is fatal (never retried: a failed fsync may have
    dropped the dirty pages, and a retry can report success)."""
    try:
        fault("spool.fsync")
        os.fsync(fd)
    except OSError as exc:
        raise FatalIOError(f"fsync of {label} failed: {exc}") from exc


def _io_error(what: str, exc: OSError) -> DiskFullError | FatalIOError:
    """ENOSPC is a pause; anything else leaves the disk in an unknown state."""
    if exc.errno in FULL_ERRNOS:
        return DiskFullError(f"{what}: {exc.strerror}")
    return FatalIOError(f"{what}: {exc}")


def split_name(name: bytes) -> tuple[bytes, bytes]:
    """(folder, base) of a name relative to a data folder: b"" for a file directly in it."""
    if b"/" not in name:
        return b"", name  # nearly every file: no tuple of three, no slicing
    folder, _, base = name.rpartition(b"/")
    return folder, base


def open_folder(root_fd: int, folder: bytes, create_mode: int | None = None) -> int:
    """A new descriptor of ROOT/FOLDER, opened one component at a time with
    O_NOFOLLOW: a symlink anywhere on the way fails (ELOOP or ENOTDIR), never
    followed, which a path given whole to openat would do for all but its last
    component.  With CREATE_MODE, missing folders are made, each durable (its
    parent fsynced) before anything goes into it."""
    fd = os.dup(root_fd)
    try:
        for part in folder.split(b"/"):
            if part in (b"", b".", b".."):
                raise OSError(errno.EINVAL, "not a plain folder name", os.fsdecode(folder))
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, create_mode, dir_fd=fd)
                fsync_dir(fd, os.fsdecode(folder))
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exists(dir_fd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 5x as much to build
class Entry:
    """What lstat said of a regular file in incoming/ or working/."""

    name: bytes
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class ChangedError(ValueError):
    """The file changed while it was being claimed: a writer is still at work."""


class HeldOpenError(ChangedError):
    """A process held the file open for writing when it was claimed."""


class KeptByRuleError(ChangedError):
    """What the claim read says the file must wait (a database with its journal
    beside it): WHY is what ``Spool.judge_claimed`` answered."""

    def __init__(self, why: object) -> None:
        super().__init__("must wait, as a rule of tool_files says")
        self.why = why


@dataclass(frozen=True)
class Refusal:
    """An entry dropline will not touch, and why."""

    name: bytes
    reason: str
    dev: int
    ino: int
    # One word from REFUSAL_KINDS, for counting refusals without the free text.
    kind: str = "other"


REFUSAL_KINDS: tuple[str, ...] = (
    "symlink",
    "fifo",
    "socket",
    "directory",
    "device",
    "hard_link",
    "unreadable",
    "too_large",
    "unwritable_folder",
    "other",
)


def classify(name: bytes, st: os.stat_result, max_size: int) -> Entry | Refusal:
    """Accept only a regular file with one link and a size under the limit."""
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_nlink == 1 and st.st_size <= max_size:
        return Entry(name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    reason = ""
    kind = "other"
    if stat.S_ISLNK(mode):
        reason, kind = "symbolic link (never followed)", "symlink"
    elif stat.S_ISFIFO(mode):
        reason, kind = "FIFO (never opened)", "fifo"
    elif stat.S_ISSOCK(mode):
        reason, kind = "socket", "socket"
    elif stat.S_ISDIR(mode):
        reason, kind = "directory (only files are processed)", "directory"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        reason, kind = "device node (never opened)", "device"
    elif not stat.S_ISREG(mode):
        reason = "not a regular file"
    elif st.st_nlink != 1:
        reason = f"has {st.st_nlink} hard links (only a file with one link is accepted)"
        kind = "hard_link"
    elif st.st_size > max_size:
        reason = f"too large: {st.st_size} bytes, the limit is {max_size}"
        kind = "too_large"
    if reason:
        return Refusal(name, reason, st.st_dev, st.st_ino, kind)
    return Entry(name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class FolderWalk:
    """What one look into a folder dropped into incoming/ found."""

    names: list[bytes] = field(default_factory=list)  # relative to incoming/
    refused: list[Refusal] = field(default_factory=list)
    gone: bool = False  # no longer a folder there


def fit_name(name: bytes, tag: str, reserve: int = 0) -> bytes:
    """NAME with ``.TAG`` before its extension, shortened to fit NAME_MAX - RESERVE."""
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, b""
    suffix = b"." + tag.encode() + (b"." + ext if ext else b"")
    room = _NAME_MAX - reserve - len(suffix)
    return stem[: max(room, 1)] + suffix


class Spool:
    """The four folders of one data directory, opened once."""

    def __init__(self, data_dir: Path, *, max_file_size: int, layout: str = "daily") -> None:
        self.data_dir = data_dir
        self.max_file_size = max_file_size
        self.layout = layout
        # Called while a big file is read (the daemon keeps its watchdog fed).
        self.reading_tick: Callable[[], None] | None = None
        # Asks the kernel whether a file is held open for writing (the daemon
        # sets it); None: never asked, timing alone decides.
        self.leases: LeaseProbe | None = None
        # Asked with (name in incoming/, first bytes) of each file the claim read;
        # an answer that is not None puts the file back (KeptByRuleError).
        self.judge_claimed: Callable[[bytes, bytes], object | None] | None = None
        self._fds: dict[str, int] = {}
        self._dirty: dict[int, str] = {}
        self._day_fds: dict[str, int] = {}
        # Folders under archive/, failed/ or incoming/ that a move touched (a file
        # dropped in a sub-folder keeps its place): open until sync() fsynced them.
        self._sub_fds: dict[tuple[int, bytes], int] = {}
        try:
            data_fd = os.open(data_dir, DIR_FLAGS)
        except OSError as exc:
            raise FatalIOError(f"cannot open data directory {data_dir}: {exc.strerror}") from exc
        self._fds["data"] = data_fd
        for sub in SUBDIRS:
            try:
                self._fds[sub] = os.open(sub, DIR_FLAGS, dir_fd=data_fd)
            except OSError as exc:
                self.close()
                raise FatalIOError(
                    f"cannot open {data_dir / sub}: {exc.strerror} (it must be a real directory)"
                ) from exc
        self._devs = {fd: os.fstat(fd).st_dev for fd in self._fds.values()}
        self._euid = os.geteuid()
        self._groups = {os.getegid(), *os.getgroups()}
        self.incoming_fd = self._fds["incoming"]
        self.working_fd = self._fds["working"]
        self.archive_fd = self._fds["archive"]
        self.failed_fd = self._fds["failed"]

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._day_fds.values(), *self._sub_fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._day_fds.clear()
        self._sub_fds.clear()

    def _place(self, root_fd: int, name: bytes, *, create: bool = False) -> tuple[int, bytes]:
        """(folder descriptor, base name) of NAME under ROOT_FD: ROOT_FD itself for a
        plain name, else its sub-folder (made if CREATE), open until the next sync()."""
        folder, base = split_name(name)
        if not folder:
            return root_fd, name
        key = (root_fd, folder)
        fd = self._sub_fds.get(key)
        if fd is None:
            fd = open_folder(root_fd, folder, 0o750 if create else None)
            self._sub_fds[key] = fd
            self._devs[fd] = os.fstat(fd).st_dev
        return fd, base

    def _label(self, root_fd: int, name: bytes) -> str:
        """The folder of NAME for messages: "failed", "archive/2026-12-06/batch", ..."""
        root = next((k for k, v in self._fds.items() if v == root_fd), "")
        root = root or "archive/" + next((k for k, v in self._day_fds.items() if v == root_fd), "")
        folder = split_name(name)[0]
        return f"{root}/{os.fsdecode(folder)}" if folder else root

    # --- looking ---------------------------------------------------------

    def inspect_incoming(self, name: bytes) -> Entry | Refusal | None:
        """lstat NAME in incoming/ (or in a sub-folder: NAME is relative); None if it
        is gone, or if a folder on its way is not a folder any more."""
        folder, base = split_name(name)
        try:
            if not folder:
                st = os.stat(name, dir_fd=self.incoming_fd, follow_symlinks=False)
            else:
                fd = open_folder(self.incoming_fd, folder)
                try:
                    st = os.stat(base, dir_fd=fd, follow_symlinks=False)
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EACCES, errno.EINVAL):
                return None  # a symlink swapped in on the way: never followed
            raise
        found = classify(name, st, self.max_file_size)
        if isinstance(found, Entry) and not self._readable(st):
            # Claiming it would strand it in working/: nothing could read it there.
            return Refusal(
                name,
                f"not readable by the dropline user (mode {stat.S_IMODE(st.st_mode):04o}): "
                "droppers must leave files readable by their group (umask 027)",
                st.st_dev,
                st.st_ino,
                "unreadable",
            )
        return found

    def _readable(self, st: os.stat_result) -> bool:
        """Whether this process may read a file of that owner, group and mode."""
        if self._euid == 0:
            return True
        if st.st_uid == self._euid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in self._groups:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)

    def incoming_held_open(self, entry: Entry) -> bool | None:
        """Whether a process holds incoming/NAME open for writing now (``lease.py``);
        None when that cannot be told (no probe, leases refused, or the name no
        longer the file checked: the claim's own checks see to that)."""
        if self.leases is None:
            return None
        folder, base = split_name(entry.name)
        try:
            if not folder:
                fd = os.open(entry.name, _FILE_FLAGS, dir_fd=self.incoming_fd)
            else:
                dir_fd = open_folder(self.incoming_fd, folder)
                try:
                    fd = os.open(base, _FILE_FLAGS, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_dev) != (entry.ino, entry.dev):
                return None
            return self.leases.held_open(fd)
        finally:
            os.close(fd)

    def working_held_open(self, name: bytes) -> bool | None:
        """Whether a process holds working/NAME open for writing now; None when
        that cannot be told."""
        if self.leases is None:
            return None
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self.working_fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return self.leases.held_open(fd)
        finally:
            os.close(fd)

    def scan_incoming(self) -> Iterator[bytes]:
        """Stream the names in incoming/, never holding the whole listing."""
        fd = os.dup(self.incoming_fd)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    yield os.fsencode(entry.name)
        finally:
            os.close(fd)

    def walk_folder(self, folder: bytes, skip: Callable[[bytes], bool], limit: int) -> FolderWalk:
        """The entries under incoming/FOLDER, up to LIMIT, as names relative to incoming/.

        SKIP: base names never looked at (hidden and temporary ones, folders too:
        rsync's partial-dir stays its own).  Nothing is followed: every folder is
        opened with O_NOFOLLOW from the one above it.  A folder that dropline
        could not empty (no write permission for its user) is refused whole: a
        file claimed from it could be taken but its folder never removed, and a
        file put back could not go back.
        """
        walk = FolderWalk()
        try:
            top = open_folder(self.incoming_fd, folder)
        except OSError:
            walk.gone = True
            return walk
        stack: list[tuple[int, bytes]] = [(top, folder)]
        try:
            while stack and len(walk.names) < limit:
                fd, path = stack.pop()
                try:
                    if self._euid != 0 and not os.access(
                        ".", os.W_OK | os.X_OK, dir_fd=fd, effective_ids=True
                    ):
                        mode = stat.S_IMODE(os.fstat(fd).st_mode)
                        walk.refused.append(self._unwritable(fd, path, mode))
                        continue
                    entries = self._list(fd)
                    for name, is_dir in entries:
                        if skip(name):
                            continue
                        relative = path + b"/" + name
                        if not is_dir:
                            walk.names.append(relative)
                            continue
                        if relative.count(b"/") >= MAX_FOLDER_DEPTH:
                            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                            walk.refused.append(
                                Refusal(
                                    relative,
                                    f"folder nested deeper than {MAX_FOLDER_DEPTH} levels",
                                    st.st_dev,
                                    st.st_ino,
                                    "directory",
                                )
                            )
                            continue
                        with contextlib.suppress(OSError):  # gone, or swapped for a symlink
                            stack.append((os.open(name, DIR_FLAGS, dir_fd=fd), relative))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)
        return walk

    @staticmethod
    def _list(fd: int) -> list[tuple[bytes, bool]]:
        """(name, is a folder) of each entry; d_type only, never a stat or a follow."""
        listing = os.dup(fd)
        try:
            with os.scandir(listing) as it:
                return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
        finally:
            os.close(listing)

    @staticmethod
    def _unwritable(fd: int, path: bytes, mode: int) -> Refusal:
        st = os.fstat(fd)
        return Refusal(
            path,
            f"a folder the dropline user cannot empty (mode {mode:04o}, no write permission): "
            "its files stay where they are; give the folder group write permission, or "
            "let incoming/'s default ACL apply (a tool that sets folder modes takes it away)",
            st.st_dev,
            st.st_ino,
            "unwritable_folder",
        )

    def remove_empty_folder(self, folder: bytes, quiet: float) -> bool:
        """rmdir incoming/FOLDER and the folders under it that are empty and have not
        changed for QUIET seconds (a writer pausing between two files finds its
        folder still there); True once FOLDER is gone.  rmdir itself refuses a
        folder that is not empty, so a file that arrives meanwhile is never lost."""
        parent_name, base = split_name(folder)
        try:
            parent = open_folder(self.incoming_fd, parent_name) if parent_name else None
        except OSError:
            return True
        try:
            return self._remove_if_empty(
                self.incoming_fd if parent is None else parent, base, quiet, time.time(), 0
            )
        finally:
            if parent is not None:
                os.close(parent)

    def _remove_if_empty(
        self, parent: int, name: bytes, quiet: float, now: float, depth: int
    ) -> bool:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            return exc.errno == errno.ENOENT
        try:
            st = os.fstat(fd)
            # Judged before its own empty folders go: removing them changes its times.
            was_quiet = now - max(st.st_mtime, st.st_ctime) >= quiet
            if depth < MAX_FOLDER_DEPTH:
                for child, is_dir in self._list(fd):
                    if is_dir:
                        self._remove_if_empty(fd, child, quiet, now, depth + 1)
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

    def list_working(self) -> list[bytes]:
        """The names in working/ (bounded by max_in_flight, so a list is fine)."""
        fd = os.dup(self.working_fd)
        try:
            with os.scandir(fd) as it:
                return [os.fsencode(e.name) for e in it]
        finally:
            os.close(fd)

    def working_entry(self, name: bytes) -> Entry | Refusal | None:
        """lstat working/NAME; None if it is gone."""
        return self._entry_in(self.working_fd, name)

    def _entry_in(self, dir_fd: int, name: bytes) -> Entry | Refusal | None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return classify(name, st, self.max_file_size)

    def remove_working_temp(self, name: bytes) -> None:
        """Remove a stage's leftover temporary from working/ (never anything else)."""
        if name.startswith(WORKING_TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self.working_fd)
                self._mark(self.working_fd, "working")

    def fingerprint(self, name: bytes) -> tuple[int, int] | None:
        """(size, ctime) of working/NAME, to see whether anyone changed it.

        ctime, not mtime: the file's owner (a dropper) can set its mtime back,
        but every write moves its ctime, which nobody can set.
        """
        try:
            st = os.stat(name, dir_fd=self.working_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_ctime_ns

    @staticmethod
    def free_working_name(name: bytes, item_id: str, in_use: set[bytes]) -> bytes:
        """NAME itself unless a file in working/ has it (IN_USE), else NAME.ITEMID.

        Only dropline writes into working/, so the names in use are known
        without asking the filesystem; a rename that meets one anyway fails
        (RENAME_NOREPLACE) rather than overwrite.
        """
        if b"/" in name:
            name = split_name(name)[1]  # working/ is flat; the item keeps the folder
        if name not in in_use:
            return name
        return fit_name(name, item_id)

    def hash_working(
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
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self.working_fd)
        except FileNotFoundError:
            raise ValueError("gone from working/") from None
        except OSError as exc:
            raise ValueError(f"cannot be opened safely: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            checked = classify(name, st, self.max_file_size)
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
                if self.reading_tick is not None:
                    self.reading_tick()  # a file of gigabytes takes seconds
            if expect is not None and (size, st.st_size, st.st_mtime_ns) != (
                expect.size,
                expect.size,
                expect.mtime_ns,
            ):
                raise ChangedError("still being written")
            if expect is not None and self.leases is not None:
                if self.leases.held_open(fd):
                    raise HeldOpenError("held open for writing")
                if os.fstat(fd).st_ctime_ns != st.st_ctime_ns:
                    raise ChangedError("written while it was read")
            # JUDGE: a claim from incoming/ (a file kept in working/ is taken already).
            if judge and expect is not None and self.judge_claimed is not None:
                why = self.judge_claimed(expect.name, head)
                if why is not None:
                    raise KeptByRuleError(why)
            return digest.hexdigest(), size, st.st_ctime_ns
        finally:
            os.close(fd)

    # --- moving ----------------------------------------------------------

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
        try:
            dir_fd, base = self._place(self.incoming_fd, name, create=True)
            rename_noreplace(self.working_fd, working_name, dir_fd, base)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                return None
            raise FatalIOError(f"putting {working_name!r} back into incoming/: {exc}") from exc
        self._mark(dir_fd, self._label(self.incoming_fd, name))
        self._mark(self.working_fd, "working")
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
        for candidate in self._name_candidates(name, item_id, 0):
            done = self._put_back(working_name, candidate)
            if done is None:
                return None
            if done:
                return candidate
        raise FatalIOError(f"no free name in incoming/ to put {working_name!r} back")

    def choose_destination(
        self, outcome: str, name: bytes, item_id: str, day: str, taken: set[tuple[str, bytes]]
    ) -> tuple[str, bytes]:
        """A free (subdir, name) under archive/ or failed/ for this file; never a taken one."""
        if outcome == "archived":
            subdir, reserve = (day if self.layout == "daily" else ""), 0
        else:
            subdir, reserve = "", len(_ERROR_SUFFIX)
        for candidate in self._name_candidates(name, item_id, reserve):
            if (subdir, candidate) in taken:
                continue
            # In archive/ the rename itself finds a taken name (RENAME_NOREPLACE) and
            # the caller chooses again; failed/ is checked first because the reason
            # is written there before the file.
            if reserve and (
                self._exists_at(self.failed_fd, candidate)
                or self._exists_at(self.failed_fd, candidate + _ERROR_SUFFIX)
            ):
                continue
            folder = split_name(candidate)[0]
            if folder:
                # The file keeps the folder it was dropped in: made (durably) now,
                # before the mover is asked to move the file into it.
                try:
                    os.close(open_folder(self._end_dir(outcome, subdir), folder, 0o750))
                except OSError as exc:
                    raise _io_error(f"cannot create the folder of {candidate!r}", exc) from exc
            return subdir, candidate
        raise FatalIOError(f"no free name for {name!r} in {outcome}")

    @staticmethod
    def _name_candidates(name: bytes, item_id: str, reserve: int) -> Iterator[bytes]:
        """NAME, then NAME.ITEMID, then NAME.ITEMID-N: built only as far as needed.
        A name in a folder keeps it; only its base name changes."""
        folder, base = split_name(name)
        prefix = folder + b"/" if folder else b""
        if len(base) + reserve <= _NAME_MAX:
            yield name
        yield prefix + fit_name(base, item_id, reserve)
        for n in range(1, 100):
            yield prefix + fit_name(base, f"{item_id}-{n}", reserve)

    def destination_exists(self, outcome: str, subdir: str, name: bytes) -> bool:
        dir_fd = self.failed_fd if outcome == "failed" else self._archive_dir(subdir, create=False)
        return dir_fd is not None and self._exists_at(dir_fd, name)

    def _exists_at(self, root_fd: int, name: bytes) -> bool:
        """Whether NAME (maybe in a sub-folder) exists under ROOT_FD."""
        folder, base = split_name(name)
        if not folder:
            return _exists(root_fd, name)
        try:
            dir_fd = open_folder(root_fd, folder)
        except FileNotFoundError:
            return False
        try:
            return _exists(dir_fd, base)
        finally:
            os.close(dir_fd)

    def in_working(self, working_name: bytes) -> bool:
        return _exists(self.working_fd, working_name)

    def rename_folder(self, outcome: str, subdir: str) -> str | None:
        """The destination folder as the mover names it ("failed", "archive",
        "archive/DAY"), created if need be; None if it is on another filesystem
        than working/ (a move there is a copy: ``finish`` does it)."""
        if not self._beside_working(self._end_dir(outcome, subdir)):
            return None
        if outcome == "failed":
            return "failed"
        return f"archive/{subdir}" if subdir else "archive"

    def _end_dir(self, outcome: str, subdir: str) -> int:
        """The folder a file ends in: failed/, or archive/[SUBDIR/] (created if need be)."""
        if outcome == "failed":
            return self.failed_fd
        fd = self._archive_dir(subdir, create=True)
        assert fd is not None
        return fd

    def _beside_working(self, dir_fd: int) -> bool:
        """Whether DIR_FD is on working/'s filesystem (a rename reaches it)."""
        dev = self._devs.get(dir_fd)
        if dev is None:
            dev = self._devs[dir_fd] = os.fstat(dir_fd).st_dev
        return dev == self._devs[self.working_fd]

    def finish(self, working_name: bytes, outcome: str, subdir: str, final_name: bytes) -> bool:
        """Move working/WORKING_NAME to its end; False if it is no longer in working/.

        For a failure, its reason (``write_error``) must already be durable.
        """
        end_fd = self._end_dir(outcome, subdir)
        label = self._label(end_fd, final_name)
        try:
            dir_fd, final_name = self._place(end_fd, final_name, create=True)
        except OSError as exc:
            raise _io_error(f"cannot create the folder of {final_name!r}", exc) from exc
        if not self._beside_working(dir_fd):
            if not _exists(self.working_fd, working_name):
                return False
            self._copy_across(self.working_fd, working_name, dir_fd, final_name, label)
        else:
            try:
                rename_noreplace(self.working_fd, working_name, dir_fd, final_name)
            except FileNotFoundError:
                return False  # already moved (recovery is completing an earlier run)
            except FileExistsError:
                raise
            except OSError as exc:
                raise _io_error(f"move of {working_name!r} to {outcome}", exc) from exc
        self._mark(self.working_fd, "working")
        self._mark(dir_fd, label)
        return True

    def _copy_across(
        self, src_fd: int, working_name: bytes, dir_fd: int, final_name: bytes, label: str
    ) -> None:
        """Move to another filesystem: copy, fsync, rename into place, fsync, unlink.

        A crash leaves either the source alone (and maybe a hidden temporary
        copy, replaced on the next try) or both the source and a complete copy
        under the final name; the next try then sees the identical copy and
        only removes the source.
        """
        if _exists(dir_fd, final_name):
            if not self._same_content(src_fd, working_name, dir_fd, final_name):
                raise FileExistsError(errno.EEXIST, "target exists", os.fsdecode(final_name))
        else:
            tmp = b".dropline-copy." + final_name[: _NAME_MAX - 20] + b".tmp"
            try:
                src = os.open(working_name, _FILE_FLAGS, dir_fd=src_fd)
                try:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                    dst = os.open(tmp, flags, 0o640, dir_fd=dir_fd)
                    try:
                        size = os.fstat(src).st_size
                        copied = 0
                        while copied < size:
                            sent = os.sendfile(dst, src, copied, min(size - copied, 1 << 30))
                            if sent == 0:
                                break
                            copied += sent
                        fault("spool.write")
                        os.fsync(dst)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
                crashpoint("finish.copied")
                rename_noreplace(dir_fd, tmp, dir_fd, final_name)
                fault("spool.fsync")
                os.fsync(dir_fd)
            except FileExistsError:
                raise
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise _io_error(f"copy of {working_name!r} to {label}", exc) from exc
            crashpoint("finish.copy_renamed")
        try:
            os.unlink(working_name, dir_fd=src_fd)
        except OSError as exc:
            raise _io_error(f"removal of {working_name!r} after its copy", exc) from exc

    def _same_content(self, src_fd: int, working_name: bytes, dir_fd: int, name: bytes) -> bool:
        """True when DIR/NAME is a complete copy of SRC/WORKING_NAME."""
        try:
            a = os.open(working_name, _FILE_FLAGS, dir_fd=src_fd)
        except OSError:
            return False
        try:
            b = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            os.close(a)
            return False
        try:
            if os.fstat(a).st_size != os.fstat(b).st_size:
                return False
            while True:
                chunk = os.read(a, 1 << 20)
                if chunk != os.read(b, len(chunk) or 1):
                    return False
                if not chunk:
                    return True
        finally:
            os.close(a)
            os.close(b)

    # --- back from failed/ (``dropline retry``) ----------------------------

    def failed_entry(self, name: bytes) -> Entry | Refusal | None:
        """lstat failed/NAME; None if it is gone."""
        try:
            dir_fd, base = self._place(self.failed_fd, name)
        except FileNotFoundError:
            return None
        found = self._entry_in(dir_fd, base)
        if isinstance(found, Entry):
            found.name = name
        elif found is not None:
            found = dataclasses.replace(found, name=name)
        return found

    def requeue(self, final_name: bytes, working_name: bytes) -> bool:
        """Move failed/FINAL_NAME back to working/WORKING_NAME; False if it is gone.

        Durable after the next ``sync()``; its reason is removed afterwards
        (``remove_error``), so a crash never leaves a failed file without one.
        """
        try:
            src_fd, base = self._place(self.failed_fd, final_name)
        except FileNotFoundError:
            return _exists(self.working_fd, working_name)
        if self._devs[src_fd] != self._devs[self.working_fd]:
            if not _exists(src_fd, base):
                return _exists(self.working_fd, working_name)
            self._copy_across(src_fd, base, self.working_fd, working_name, "working")
        else:
            try:
                rename_noreplace(src_fd, base, self.working_fd, working_name)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _io_error(f"move of {final_name!r} from failed/ to working/", exc) from exc
        self._mark(src_fd, self._label(self.failed_fd, final_name))
        self._mark(self.working_fd, "working")
        return True

    # --- retention (``dropline prune``) -------------------------------------

    def remove_final(self, outcome: str, subdir: str, final_name: bytes) -> int:
        """Delete a file at its end (and, in failed/, its reason); returns bytes freed."""
        if outcome == "failed":
            dir_fd: int | None = self.failed_fd
            names = [final_name, final_name + _ERROR_SUFFIX]
        else:
            dir_fd = self._archive_dir(subdir, create=False)
            names = [final_name]
        if dir_fd is None:
            return 0
        if b"/" in final_name:
            try:
                dir_fd, _ = self._place(dir_fd, final_name)
            except FileNotFoundError:
                return 0
            names = [split_name(n)[1] for n in names]
        freed = 0
        for name in names:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                # Never a directory, whatever a hand-made entry of that name is.
                if stat.S_ISDIR(st.st_mode):
                    continue
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _io_error(f"removal of {name!r} for retention", exc) from exc
            freed += st.st_size
            self._mark(dir_fd, f"{outcome}/{subdir}")
        return freed

    def remove_empty_days(self, before: str) -> list[str]:
        """rmdir the empty date folders of archive/ older than BEFORE (YYYY-MM-DD)."""
        removed = []
        fd = os.dup(self.archive_fd)
        try:
            with os.scandir(fd) as it:
                days = [e.name for e in it if _DAY.fullmatch(e.name) and e.name < before]
        finally:
            os.close(fd)
        for day in sorted(days):
            old = self._day_fds.pop(day, None)
            if old is not None:
                os.close(old)
            # With the empty folders that files dropped in folders kept (days are
            # past: nothing moves into them any more).
            if not self._remove_if_empty(self.archive_fd, day.encode(), 0.0, time.time(), 0):
                continue  # not empty (or not a folder): kept
            removed.append(day)
            self._mark(self.archive_fd, "archive")
        return removed

    def write_error(self, final_name: bytes, doc: dict[str, Any]) -> None:
        """Write failed/FINAL_NAME.error.json: a temporary name, fsync, rename into place.

        The rename is durable after the next ``sync()``, which the caller does
        before the file itself is moved beside it.
        """
        try:
            failed_fd, name = self._place(self.failed_fd, final_name + _ERROR_SUFFIX, create=True)
        except OSError as exc:
            raise _io_error(f"cannot create the folder of {final_name!r} in failed/", exc) from exc
        tmp = b".tmp-" + name[: _NAME_MAX - 5]
        data = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True).encode() + b"\n"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
                dir_fd=failed_fd,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                fault("spool.write")
                os.fsync(fd)
            finally:
                os.close(fd)
            # Replaces (atomically) a reason left by an earlier, interrupted attempt.
            os.rename(tmp, name, src_dir_fd=failed_fd, dst_dir_fd=failed_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=failed_fd)
            raise _io_error(f"writing {name!r} in failed/", exc) from exc
        self._mark(failed_fd, self._label(self.failed_fd, final_name))

    def remove_error(self, final_name: bytes) -> None:
        """Remove a reason written for a destination that turned out to be taken."""
        with contextlib.suppress(FileNotFoundError):
            failed_fd, name = self._place(self.failed_fd, final_name + _ERROR_SUFFIX)
            os.unlink(name, dir_fd=failed_fd)
            self._mark(failed_fd, self._label(self.failed_fd, final_name))

    def _archive_dir(self, subdir: str, *, create: bool) -> int | None:
        if not subdir:
            return self.archive_fd
        fd = self._day_fds.get(subdir)
        if fd is not None:
            return fd
        try:
            fd = os.open(subdir, DIR_FLAGS, dir_fd=self.archive_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(subdir, 0o750, dir_fd=self.archive_fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _io_error(f"cannot create archive/{subdir}", exc) from exc
            # Durable at once (once a day): a file copied in from another
            # filesystem has its source removed before the batch's sync.
            fsync_dir(self.archive_fd, "archive/")
            fd = os.open(subdir, DIR_FLAGS, dir_fd=self.archive_fd)
        # Keep a few day folders open; old days are closed as new ones come.
        # A folder still waiting for its fsync stays open.
        for old in sorted(self._day_fds)[:-3]:
            if self._day_fds[old] not in self._dirty:
                old_fd = self._day_fds.pop(old)
                self._devs.pop(old_fd, None)
                os.close(old_fd)
        self._day_fds[subdir] = fd
        return fd

    # --- durability ------------------------------------------------------

    def _mark(self, fd: int, label: str) -> None:
        self._dirty[fd] = label

    def sync_all(self) -> None:
        """fsync incoming/ and working/ whatever was marked (recovery's first step)."""
        self._mark(self.incoming_fd, "incoming")
        self._mark(self.working_fd, "working")
        self.sync()

    def sync(self) -> None:
        """fsync every directory changed since the last sync: one fsync each."""
        dirty, self._dirty = self._dirty, {}
        # The day folder before archive/: the folder must be durable before its entry.
        for fd, label in sorted(dirty.items(), key=lambda kv: kv[1].count("/"), reverse=True):
            fsync_dir(fd, label)
        for fd in self._sub_fds.values():
            self._devs.pop(fd, None)
            os.close(fd)
        self._sub_fds.clear()
