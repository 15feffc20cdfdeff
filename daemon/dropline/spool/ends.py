"""The spool's ends: archive/[DAY/], failed/, and the folders named for duplicates.

Choosing a free name there, moving a file from working/ to its end (a rename,
or a copy when the end is on another filesystem), the reason written beside a
failed file, the way back from failed/ (``dropline retry``), and what
retention removes (``dropline prune``).  Never touches the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import stat
import time
from typing import Any

from ..crashpoints import crashpoint
from ..errors import DiskFullError, FatalIOError
from ..escaping import quoted
from .dirs import Dirs, Settings, remove_if_empty
from .durable import (
    FILE_FLAGS,
    NAME_MAX,
    copy_across,
    copy_to_temp,
    exists,
    io_error,
    open_folder,
    rename_noreplace,
    write_atomic,
)
from .entries import Entry, Refusal, entry_in
from .names import ERROR_SUFFIX, OUTSIDE, end_folder, name_candidates, split_name

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Opening a folder where something else was put (a symbolic link, a file): never followed.
_IN_ITS_PLACE = (errno.ELOOP, errno.ENOTDIR, errno.EEXIST)


class Ends:
    """archive/ and failed/: where each file ends, and what happens there later."""

    def __init__(self, dirs: Dirs, settings: Settings) -> None:
        self._dirs = dirs
        self._settings = settings

    # --- the destination -----------------------------------------------------

    def choose_destination(
        self,
        outcome: str,
        name: bytes,
        item_id: str,
        day: str,
        taken: set[tuple[str, bytes]],
        outside: str = "",
    ) -> tuple[str, bytes]:
        """A free (subdir, name) under archive/ or failed/ for this file; never a taken
        one.  OUTSIDE: an archived file ends in that folder of the data folder instead
        (a duplicate's ``duplicates_to``), laid out as archive/ is."""
        failed = self._dirs.failed
        if outcome == "archived":
            subdir, reserve = self._archive_folder(day, outside), 0
        else:
            subdir, reserve = "", len(ERROR_SUFFIX)
        for candidate in name_candidates(name, item_id, reserve):
            if (subdir, candidate) in taken:
                continue
            # In archive/ the rename itself finds a taken name (RENAME_NOREPLACE) and
            # the caller chooses again; failed/ is checked first because the reason
            # is written there before the file.
            if reserve and (
                self._dirs.exists_at(failed, candidate)
                or self._dirs.exists_at(failed, candidate + ERROR_SUFFIX)
            ):
                continue
            folder = split_name(candidate)[0]
            if folder:
                # The file keeps the folder it was dropped in: made (durably) now,
                # before the mover is asked to move the file into it.
                try:
                    os.close(open_folder(self._end_dir(outcome, subdir), folder, 0o750))
                except OSError as exc:
                    raise io_error(f"cannot create the folder of {quoted(candidate)}", exc) from exc
            return subdir, candidate
        raise FatalIOError(f"no free name for {quoted(name)} in {outcome}")

    def _archive_folder(self, day: str, outside: str) -> str:
        """The folder under archive/ an archived file of DAY ends in: "", "DAY", or
        in the folder OUTSIDE named for duplicates "../OUTSIDE[/DAY]"."""
        subdir = day if self._settings.layout == "daily" else ""
        if not outside:
            return subdir
        return f"{OUTSIDE}{outside}/{subdir}" if subdir else OUTSIDE + outside

    def outside_problem(self, name: str, day: str) -> str:
        """Why the folder NAME of the data folder (named for duplicates), or its folder
        of the day DAY, cannot take a file now, made if missing; "" if it can.  A
        symbolic link or a file put in its place is never followed: the caller ends
        the file elsewhere.  Any other error is what it would be for the move."""
        subdir = self._archive_folder(day, name)
        try:
            self._dirs.archive_dir(subdir, create=True)
        except FatalIOError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno in _IN_ITS_PLACE:
                return self._in_its_place(subdir.removeprefix(OUTSIDE)) or str(exc)
            raise
        except DiskFullError:
            pass  # the move meets it too, and waits for space as any move does
        return ""

    def _in_its_place(self, folder: str) -> str:
        """What is in the place of FOLDER ("dups/2026-12-07") or of its parent: "dups
        is a symbolic link (never followed)"; "" if neither is found odd.  Each is
        looked at (lstat) from the data folder after its parent was found a folder."""
        parts = folder.split("/")
        for n in range(1, len(parts) + 1):
            path = "/".join(parts[:n])
            try:
                st = os.stat(path, dir_fd=self._dirs.data, follow_symlinks=False)
            except OSError:
                return ""
            if stat.S_ISLNK(st.st_mode):
                return f"{path} is a symbolic link (never followed)"
            if not stat.S_ISDIR(st.st_mode):
                return f"{path} is not a folder"
        return ""

    def destination_exists(self, outcome: str, subdir: str, name: bytes) -> bool:
        dirs = self._dirs
        dir_fd = dirs.failed if outcome == "failed" else dirs.archive_dir(subdir, create=False)
        return dir_fd is not None and dirs.exists_at(dir_fd, name)

    def rename_folder(self, outcome: str, subdir: str) -> str | None:
        """The destination folder as the mover names it ("failed", "archive",
        "archive/DAY"), created if need be; None if the mover cannot rename the file
        there (``finish`` moves it): a folder on another filesystem than working/
        (a copy), or outside archive/ (the mover has archive/ and failed/ only)."""
        if subdir.startswith(OUTSIDE) or not self._beside_working(self._end_dir(outcome, subdir)):
            return None
        if outcome == "failed":
            return "failed"
        return f"archive/{subdir}" if subdir else "archive"

    def _end_dir(self, outcome: str, subdir: str) -> int:
        """The folder a file ends in: failed/, or archive/[SUBDIR/] (created if need be)."""
        if outcome == "failed":
            return self._dirs.failed
        fd = self._dirs.archive_dir(subdir, create=True)
        assert fd is not None
        return fd

    def _beside_working(self, dir_fd: int) -> bool:
        """Whether DIR_FD is on working/'s filesystem (a rename reaches it)."""
        return self._dirs.dev(dir_fd) == self._dirs.dev(self._dirs.working)

    # --- the move ------------------------------------------------------------

    def finish(self, working_name: bytes, outcome: str, subdir: str, final_name: bytes) -> bool:
        """Move working/WORKING_NAME to its end; False if it is no longer in working/.

        For a failure, its reason (``write_error``) must already be durable.
        """
        dirs = self._dirs
        end_fd = self._end_dir(outcome, subdir)
        label = dirs.label(end_fd, final_name)
        try:
            dir_fd, final_name = dirs.place(end_fd, final_name, create=True)
        except OSError as exc:
            raise io_error(f"cannot create the folder of {quoted(final_name)}", exc) from exc
        if not self._beside_working(dir_fd):
            if not exists(dirs.working, working_name):
                return False
            copy_across(dirs.working, working_name, dir_fd, final_name, label)
        else:
            try:
                rename_noreplace(dirs.working, working_name, dir_fd, final_name)
            except FileNotFoundError:
                return False  # already moved (recovery is completing an earlier run)
            except FileExistsError:
                raise
            except OSError as exc:
                raise io_error(f"move of {quoted(working_name)} to {outcome}", exc) from exc
        dirs.mark(dirs.working, "working")
        dirs.mark(dir_fd, label)
        return True

    def write_error(self, final_name: bytes, doc: dict[str, Any]) -> None:
        """Write failed/FINAL_NAME.error.json: a temporary name, fsync, rename into place.

        The rename is durable after the next ``sync()``, which the caller does
        before the file itself is moved beside it.
        """
        dirs = self._dirs
        try:
            failed_fd, name = dirs.place(dirs.failed, final_name + ERROR_SUFFIX, create=True)
        except OSError as exc:
            raise io_error(
                f"cannot create the folder of {quoted(final_name)} in failed/", exc
            ) from exc
        data = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True).encode() + b"\n"
        try:
            # Replaces (atomically) a reason left by an earlier, interrupted attempt.
            write_atomic(failed_fd, name, b".tmp-" + name[: NAME_MAX - 5], data)
        except OSError as exc:
            raise io_error(f"writing {quoted(name)} in failed/", exc) from exc
        dirs.mark(failed_fd, dirs.label(dirs.failed, final_name))

    def remove_error(self, final_name: bytes) -> None:
        """Remove a reason written for a destination that turned out to be taken."""
        dirs = self._dirs
        with contextlib.suppress(FileNotFoundError):
            failed_fd, name = dirs.place(dirs.failed, final_name + ERROR_SUFFIX)
            os.unlink(name, dir_fd=failed_fd)
            dirs.mark(failed_fd, dirs.label(dirs.failed, final_name))

    # --- back from failed/ (``dropline retry``) ----------------------------

    def failed_entry(self, name: bytes) -> Entry | Refusal | None:
        """lstat failed/NAME; None if it is gone."""
        try:
            dir_fd, base = self._dirs.place(self._dirs.failed, name)
        except FileNotFoundError:
            return None
        found = entry_in(dir_fd, base, self._settings.max_file_size)
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
        dirs = self._dirs
        try:
            src_fd, base = dirs.place(dirs.failed, final_name)
        except FileNotFoundError:
            return exists(dirs.working, working_name)
        if dirs.dev(src_fd) != dirs.dev(dirs.working):
            if not exists(src_fd, base):
                return exists(dirs.working, working_name)
            copy_across(src_fd, base, dirs.working, working_name, "working")
        else:
            try:
                rename_noreplace(src_fd, base, dirs.working, working_name)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise io_error(
                    f"move of {quoted(final_name)} from failed/ to working/", exc
                ) from exc
        dirs.mark(src_fd, dirs.label(dirs.failed, final_name))
        dirs.mark(dirs.working, "working")
        return True

    # --- a copy of an archived file (``dropline replay``) ------------------

    def archived_size(self, subdir: str, final_name: bytes) -> int | None:
        """The size of archive/SUBDIR/FINAL_NAME, a regular file; None if it is not there."""
        dirs = self._dirs
        day = dirs.archive_dir(subdir, create=False)
        if day is None:
            return None
        try:
            src_fd, base = dirs.place(day, final_name)
            st = os.stat(base, dir_fd=src_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def working_free(self) -> int:
        """Bytes free in working/'s filesystem for an unprivileged writer."""
        st = os.fstatvfs(self._dirs.working)
        return st.f_bavail * st.f_frsize

    def replay_copy(self, subdir: str, final_name: bytes, working_name: bytes, temp: bytes) -> str:
        """Copy archive/SUBDIR/FINAL_NAME to working/WORKING_NAME, the archived file
        left in place: "copied", "gone" (not in archive/ any more) or why not.

        Copied into working/TEMP (a ``.dropline-tmp-`` name, which recovery
        removes), fsync'd, then renamed into place: WORKING_NAME never holds
        part of a file.  Durable after the next ``sync()``.  Done already
        (a crash after the rename) is "copied" too.
        """
        dirs = self._dirs
        if exists(dirs.working, working_name):
            return "copied"
        day = dirs.archive_dir(subdir, create=False)
        if day is None:
            return "gone"
        try:
            src_fd, base = dirs.place(day, final_name)
            src = os.open(base, FILE_FLAGS, dir_fd=src_fd)
        except FileNotFoundError:
            return "gone"
        except OSError as exc:  # a symlink put in its place (ELOOP), a folder
            return f"cannot be opened safely: {exc.strerror}"
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return "not a regular file"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dirs.working)  # a copy a crash cut short
            # A file of gigabytes takes seconds: the watchdog is fed meanwhile.
            tick = self._settings.reading_tick or (lambda: None)
            try:
                copy_to_temp(src, st.st_size, dirs.working, temp, 0o640, tick)
                owner = os.fstat(dirs.working)
                if os.geteuid() == 0 and owner.st_uid != 0:
                    # Made by root (an offline `sudo dropline replay`): the daemon's,
                    # as working/ is, or its user could not read it.
                    os.chown(temp, owner.st_uid, owner.st_gid, dir_fd=dirs.working)
                crashpoint("replay.copied")
                rename_noreplace(dirs.working, temp, dirs.working, working_name)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dirs.working)
                where = end_folder("archived", subdir)
                raise io_error(f"copy of {quoted(final_name)} from {where}/", exc) from exc
        finally:
            os.close(src)
        dirs.mark(dirs.working, "working")
        return "copied"

    # --- retention (``dropline prune``) -------------------------------------

    def remove_final(self, outcome: str, subdir: str, final_name: bytes) -> int:
        """Delete a file at its end (and, in failed/, its reason); returns bytes freed."""
        if outcome == "failed":
            dir_fd: int | None = self._dirs.failed
            names = [final_name, final_name + ERROR_SUFFIX]
        else:
            dir_fd = self._dirs.archive_dir(subdir, create=False)
            names = [final_name]
        if dir_fd is None:
            return 0
        if b"/" in final_name:
            try:
                dir_fd, _ = self._dirs.place(dir_fd, final_name)
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
                raise io_error(f"removal of {quoted(name)} for retention", exc) from exc
            freed += st.st_size
            self._dirs.mark(dir_fd, f"{outcome}/{subdir}")
        return freed

    def remove_empty_days(self, before: str, outside: tuple[str, ...] = ()) -> list[str]:
        """rmdir the empty date folders older than BEFORE (YYYY-MM-DD) of archive/ and
        of the folders OUTSIDE it that pipelines name for duplicates."""
        removed = []
        for name in ("", *outside):
            parent = self._dirs.outside(name, create=False) if name else self._dirs.archive
            if parent is None:
                continue
            fd = os.dup(parent)
            try:
                with os.scandir(fd) as it:
                    days = [e.name for e in it if _DAY.fullmatch(e.name) and e.name < before]
            finally:
                os.close(fd)
            for day in sorted(days):
                self._dirs.forget_day(f"{OUTSIDE}{name}/{day}" if name else day)
                # With the empty folders that files dropped in folders kept (days are
                # past: nothing moves into them any more).
                if not remove_if_empty(parent, day.encode(), 0.0, time.time(), 0):
                    continue  # not empty (or not a folder): kept
                removed.append(f"{name}/{day}" if name else day)
                self._dirs.mark(parent, name or "archive")
        return removed
