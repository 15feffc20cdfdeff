"""The spool's intake side: looking at incoming/ before a claim.

lstat of a name (a regular file the dropline user can read, or a refusal),
whether a writer holds it open (the lease probe), the listing of incoming/,
the walk of a folder dropped into it, and the removal of folders its claims
emptied.  Nothing is followed: every folder is opened with O_NOFOLLOW from
the one above it.  Moves nothing; never touches the database.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .dirs import MAX_FOLDER_DEPTH, Dirs, Settings, list_folder, remove_if_empty
from .durable import DIR_FLAGS, FILE_FLAGS, open_folder
from .entries import Entry, Refusal, classify
from .names import split_name


@dataclass
class FolderWalk:
    """What one look into a folder dropped into incoming/ found."""

    names: list[bytes] = field(default_factory=list)  # relative to incoming/
    refused: list[Refusal] = field(default_factory=list)
    gone: bool = False  # no longer a folder there


class Incoming:
    """incoming/ as the claim sees it."""

    def __init__(self, dirs: Dirs, settings: Settings) -> None:
        self._dirs = dirs
        self._settings = settings
        self._euid = os.geteuid()
        self._groups = {os.getegid(), *os.getgroups()}

    def inspect(self, name: bytes) -> Entry | Refusal | None:
        """lstat NAME in incoming/ (or in a sub-folder: NAME is relative); None if it
        is gone, or if a folder on its way is not a folder any more."""
        folder, base = split_name(name)
        try:
            if not folder:
                st = os.stat(name, dir_fd=self._dirs.incoming, follow_symlinks=False)
            else:
                fd = open_folder(self._dirs.incoming, folder)
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
        found = classify(name, st, self._settings.max_file_size)
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

    def marker_ctime(self, name: bytes) -> int | None:
        """The change time (ns) of the done-marker NAME, a regular file; None if absent
        (or not a regular file: never followed, never opened)."""
        found = self.inspect(name)
        if found is None:
            return None
        if isinstance(found, Entry):
            return found.ctime_ns
        # A marker may have links (made by ln); anything but a regular file is no marker.
        return None if found.kind != "hard_link" else self._ctime(name)

    def _ctime(self, name: bytes) -> int | None:
        fd, base = self._dirs.place(self._dirs.incoming, name)
        try:
            return os.stat(base, dir_fd=fd, follow_symlinks=False).st_ctime_ns
        except FileNotFoundError:
            return None

    def remove_marker(self, name: bytes, claimed_ns: int) -> bool:
        """Remove the done-marker NAME of a file just claimed, if it is not newer than
        the claim (a marker made since is a new file's); durable after the next sync."""
        ctime = self.marker_ctime(name)
        if ctime is None or ctime > claimed_ns:
            return False
        fd, base = self._dirs.place(self._dirs.incoming, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base, dir_fd=fd)
            self._dirs.mark(fd, self._dirs.label(self._dirs.incoming, name))
            return True
        return False

    def _readable(self, st: os.stat_result) -> bool:
        """Whether this process may read a file of that owner, group and mode."""
        if self._euid == 0:
            return True
        if st.st_uid == self._euid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in self._groups:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)

    def held_open(self, entry: Entry) -> bool | None:
        """Whether a process holds incoming/NAME open for writing now (``lease.py``);
        None when that cannot be told (no probe, leases refused, or the name no
        longer the file checked: the claim's own checks see to that)."""
        leases = self._settings.leases
        if leases is None:
            return None
        folder, base = split_name(entry.name)
        try:
            if not folder:
                fd = os.open(entry.name, FILE_FLAGS, dir_fd=self._dirs.incoming)
            else:
                dir_fd = open_folder(self._dirs.incoming, folder)
                try:
                    fd = os.open(base, FILE_FLAGS, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_dev) != (entry.ino, entry.dev):
                return None
            return leases.held_open(fd)
        finally:
            os.close(fd)

    def scan(self) -> Iterator[bytes]:
        """Stream the names in incoming/, never holding the whole listing."""
        fd = os.dup(self._dirs.incoming)
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
            top = open_folder(self._dirs.incoming, folder)
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
                        walk.refused.append(_unwritable(fd, path, mode))
                        continue
                    entries = list_folder(fd)
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

    def remove_empty_folder(self, folder: bytes, quiet: float) -> bool:
        """rmdir incoming/FOLDER and the folders under it that are empty and have not
        changed for QUIET seconds (a writer pausing between two files finds its
        folder still there); True once FOLDER is gone.  rmdir itself refuses a
        folder that is not empty, so a file that arrives meanwhile is never lost."""
        parent_name, base = split_name(folder)
        try:
            parent = open_folder(self._dirs.incoming, parent_name) if parent_name else None
        except OSError:
            return True
        try:
            return remove_if_empty(
                self._dirs.incoming if parent is None else parent, base, quiet, time.time(), 0
            )
        finally:
            if parent is not None:
                os.close(parent)


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
