"""Durable file operations: the one place where dropline renames, fsyncs and writes
files so that a crash leaves either the old state or the new one, never half.

Used by the spool, the mover and the builtin stages that write files.

- a rename never overwrites (renameat2 with RENAME_NOREPLACE), unless the
  caller asks for an atomic replacement;
- a folder is opened one component at a time with O_NOFOLLOW: a symlink on
  the way fails, never followed;
- a file is written under a temporary name, fsynced, then renamed into place;
- a move to another filesystem is a copy under a temporary name, fsync,
  rename into place, fsync, then unlink of the source;
- a full filesystem raises DiskFullError (nothing happened; try again later);
  any other write or fsync error of the spool raises FatalIOError: the state
  on disk is unknown.

Nothing here knows the database or what the files mean.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..crashpoints import crashpoint, fault
from ..errors import DiskFullError, FatalIOError
from ..escaping import quoted

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A FIFO opens without blocking, a symlink fails the open.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_MAX = 255
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a full filesystem or quota: not fatal
_RENAME_NOREPLACE = 1
_COPY_CHUNK = 16 << 20  # between two chunks of copy_into the caller's check is called
_COMPARE_CHUNK = 1 << 20
# copy_file_range cannot copy between these two files: sendfile can.
# (EPERM: a seccomp filter that does not know the call.)
_NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)

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
    if exists(dst_dir, dst):
        raise FileExistsError(errno.EEXIST, "target exists", os.fsdecode(dst))
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def rename_into_place(dir_fd: int, tmp: bytes, name: bytes, *, replace: bool) -> None:
    """Rename the (fsynced) temporary TMP to NAME in one folder: atomically over
    NAME with REPLACE, else never over it (FileExistsError)."""
    if replace:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    else:
        rename_noreplace(dir_fd, tmp, dir_fd, name)


def replace_file(src: Path, dst: Path) -> None:
    """Rename the (fsynced) file SRC over DST, then fsync DST's folder (OSError as is)."""
    os.replace(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(fd: int, label: str) -> None:
    """fsync a directory; an error is fatal (never retried: a failed fsync may have
    dropped the dirty pages, and a retry can report success)."""
    try:
        fault("spool.fsync")
        os.fsync(fd)
    except OSError as exc:
        raise FatalIOError(f"fsync of {label} failed: {exc}") from exc


def io_error(what: str, exc: OSError) -> DiskFullError | FatalIOError:
    """ENOSPC is a pause; anything else leaves the disk in an unknown state."""
    if exc.errno in FULL_ERRNOS:
        return DiskFullError(f"{what}: {exc.strerror}")
    return FatalIOError(f"{what}: {exc}")


def exists(dir_fd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def still_named(parent: int, name: str, fd: int) -> bool:
    """Whether PARENT/NAME is still the folder FD is open on.  An operator may remove
    or move a folder that holds ends (a day of archive/, the duplicates looked at):
    a rename into the old one would fail as if the file had gone, or put it where
    its record does not say."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (held.st_ino, held.st_dev)


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


def write_atomic(dir_fd: int, name: bytes, tmp: bytes, data: bytes) -> None:
    """DATA as DIR/NAME: written to TMP, fsynced, renamed over NAME (a file left by
    an interrupted earlier try is replaced atomically).  OSError as is, TMP removed.

    The folder's fsync is the caller's: the spool batches one per folder.
    """
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o640, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fault("spool.write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def copy_across(src_fd: int, src_name: bytes, dir_fd: int, final_name: bytes, label: str) -> None:
    """Move SRC/SRC_NAME to DIR/FINAL_NAME on another filesystem: copy, fsync,
    rename into place, fsync, unlink.

    A crash leaves either the source alone (and maybe a hidden temporary
    copy, replaced on the next try) or both the source and a complete copy
    under the final name; the next try then sees the identical copy and
    only removes the source.
    """
    if exists(dir_fd, final_name):
        if not same_content(src_fd, src_name, dir_fd, final_name):
            raise FileExistsError(errno.EEXIST, "target exists", os.fsdecode(final_name))
    else:
        tmp = b".dropline-copy." + final_name[: NAME_MAX - 20] + b".tmp"
        try:
            src = os.open(src_name, FILE_FLAGS, dir_fd=src_fd)
            try:
                dst = os.open(tmp, _WRITE_FLAGS, 0o640, dir_fd=dir_fd)
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
            raise io_error(f"copy of {quoted(src_name)} to {label}", exc) from exc
        crashpoint("finish.copy_renamed")
    try:
        os.unlink(src_name, dir_fd=src_fd)
    except OSError as exc:
        raise io_error(f"removal of {quoted(src_name)} after its copy", exc) from exc


def same_content(src_fd: int, src_name: bytes, dir_fd: int, name: bytes) -> bool:
    """True when DIR/NAME is a complete copy of SRC/SRC_NAME."""
    try:
        a = os.open(src_name, FILE_FLAGS, dir_fd=src_fd)
    except OSError:
        return False
    try:
        b = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
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


def compare(src: int, size: int, dir_fd: int, name: bytes) -> str:
    """DIR/NAME against the open file SRC of SIZE bytes: "free" (no such name),
    "same" (a regular file with SRC's bytes, now fsynced) or "different"."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "free"
    # A link is never followed, a device or FIFO never opened: taken, not ours.
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return "different"
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return "free"
    except OSError:
        return "different"  # swapped for a link since, unreadable, ...
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return "different"
        offset = 0
        while offset < size:
            chunk = os.pread(src, _COMPARE_CHUNK, offset)
            if not chunk or chunk != os.pread(fd, len(chunk), offset):
                return "different"
            offset += len(chunk)
        # A crash may have come between the rename and the fsyncs: make them now.
        os.fsync(fd)
        return "same"
    finally:
        os.close(fd)


def copy_to_temp(
    src: int, size: int, dir_fd: int, tmp: bytes, mode: int, check: Callable[[], None]
) -> None:
    """SIZE bytes of SRC into a new DIR/TMP of MODE (whatever the umask), fsynced;
    CHECK is called between chunks (it may raise to stop); TMP removed on failure."""
    fd = os.open(tmp, _TEMP_FLAGS, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        copy_into(src, fd, size, check)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)


def copy_into(src: int, dst: int, size: int, check: Callable[[], None]) -> None:
    """SIZE bytes of SRC to DST, in the kernel, calling CHECK between chunks."""
    offset = 0
    copy_range = True
    while offset < size:
        check()
        count = min(size - offset, _COPY_CHUNK)
        if copy_range:
            try:
                sent = os.copy_file_range(src, dst, count, offset, offset)
            except OSError as exc:
                if offset or exc.errno not in _NO_COPY_RANGE:
                    raise
                copy_range = False
                continue
            if sent == 0 and offset == 0:
                copy_range = False
                continue
        else:
            sent = os.sendfile(dst, src, offset, count)
        if sent == 0:
            raise OSError(errno.EIO, f"publish: the source ended at {offset} of {size} bytes")
        offset += sent
