"""The mover: a helper process that does the renames and fsyncs of each batch.

At full speed the two renames of each file are most of dropline's work (and
cannot be spread over more processes: Linux takes one lock per filesystem
for a rename between folders); the loop's own work (rows, log lines, ids,
reading and hashing each claimed file) is less.  Done one after the other
in one process they leave the second core idle.  So the daemon hands each
batch's renames and directory fsyncs to this process and records another
batch meanwhile.  Reading the claimed files stays in the loop: measured,
the mover is the busier of the two.

The mover decides nothing.  The loop commits every intent before it asks
(rows "claiming" or "finishing"), the mover does exactly the moves asked,
in order, makes them durable, and answers with what happened to each (an
errno).  A crash of either process leaves what a crash of the single loop
would: recovery completes or undoes each recorded intent.

It is ``python -m dropline.spool.mover`` (a fresh interpreter, not a fork of the
threaded daemon), holding the daemon's directory descriptors and its locks
on the state directory and the data folder: a new daemon cannot start
recovery while a mover of an old one still moves files.  It ignores SIGTERM and SIGINT (the
daemon decides when to stop; the mover ends when its pipe closes) and dies
with the daemon (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..crashpoints import crash_together_with, crashpoint
from ..errors import FatalIOError
from ..escaping import quoted
from .durable import (
    DIR_FLAGS,
    FULL_ERRNOS,
    fsync_dir,
    open_folder,
    rename_noreplace,
    still_named,
)
from .ipc import Pipe, start_helper
from .names import split_name

if TYPE_CHECKING:  # the mover itself imports only what moving files needs
    import subprocess

    from .folders import Spool

SKIPPED = -1  # not tried: an earlier move of the batch met a full filesystem

# A claim: (name in incoming/, name in working/) -> errno.
ClaimMove = tuple[bytes, bytes]
# A finish: (name in working/, destination folder, final name) -> errno.  The
# folder is "failed", "archive" or "archive/DAY" (a day folder that exists).
FinishMove = tuple[bytes, str, bytes]

_ACCEPTED = (0, errno.ENOENT, errno.EEXIST, *FULL_ERRNOS)
# A claim from a sub-folder of incoming/ that a dropper changed meanwhile (removed,
# swapped for a symlink, made unwritable): not claimed this time, nothing moved.
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM)


class Folders:
    """The data folders' descriptors as the mover uses them (day folders opened as needed)."""

    def __init__(self, incoming: int, working: int, archive: int, failed: int) -> None:
        self.incoming = incoming
        self.working = working
        self.archive = archive
        self.failed = failed
        self._days: dict[str, int] = {}
        self._stale: list[int] = []  # day folders removed by hand: closed after the sync

    def destination(self, folder: str) -> int:
        if folder == "failed":
            return self.failed
        if folder == "archive":
            return self.archive
        day = folder.removeprefix("archive/")
        fd = self._days.get(day)
        if fd is None:
            fd = self._days[day] = os.open(day, DIR_FLAGS, dir_fd=self.archive)
        return fd

    def look_again(self) -> None:
        """Before a batch: day folders removed or moved away by hand since are opened
        again (the loop made them anew before asking) when a move needs them."""
        for day, fd in list(self._days.items()):
            if not still_named(self.archive, day, fd):
                self._stale.append(self._days.pop(day))

    def close_old_days(self) -> None:
        """Keep the last few day folders open (called once a batch is synced: a
        folder is never closed before its fsync)."""
        for old in sorted(self._days)[:-3]:
            os.close(self._days.pop(old))
        for fd in self._stale:
            os.close(fd)
        self._stale.clear()


def _rename(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> int:
    try:
        rename_noreplace(src_dir, src, dst_dir, dst)
    except OSError as exc:
        if exc.errno not in _ACCEPTED:
            raise FatalIOError(f"rename of {quoted(src)}: {exc.strerror}") from exc
        return exc.errno
    return 0


def claim(folders: Folders, moves: Sequence[ClaimMove]) -> list[int]:
    """Rename each file into working/, then fsync both folders once."""
    answers: list[int] = []
    full = False
    subs: dict[bytes, int] = {}  # sub-folders of incoming/ claimed from, fsynced at the end
    try:
        for name, working_name in moves:
            if full:
                answers.append(SKIPPED)
                continue
            folder, base = split_name(name)
            if not folder:
                err = _rename(folders.incoming, name, folders.working, working_name)
            else:
                err = _claim_from(folders, subs, folder, base, working_name)
            if err == 0:
                crashpoint("claim.renamed")
            full = err in FULL_ERRNOS
            answers.append(err)
        if 0 in answers:
            fsync_dir(folders.working, "working")
            fsync_dir(folders.incoming, "incoming")
            for folder, fd in subs.items():
                fsync_dir(fd, "incoming/" + os.fsdecode(folder))
    finally:
        for fd in subs.values():
            os.close(fd)
    return answers


def _claim_from(
    folders: Folders, subs: dict[bytes, int], folder: bytes, base: bytes, working_name: bytes
) -> int:
    """Claim incoming/FOLDER/BASE; the folder opened without following anything."""
    fd = subs.get(folder)
    if fd is None:
        try:
            fd = subs[folder] = open_folder(folders.incoming, folder)
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise FatalIOError(
                    f"opening {quoted(b'incoming/' + folder)}: {exc.strerror}"
                ) from exc
            return errno.ENOENT
    try:
        rename_noreplace(fd, base, folders.working, working_name)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return errno.ENOENT
        if exc.errno not in _ACCEPTED:
            raise FatalIOError(f"rename of {quoted(base)}: {exc.strerror}") from exc
        return exc.errno
    return 0


def finish(folders: Folders, moves: Sequence[FinishMove]) -> list[int]:
    """Rename each file from working/ to its end, then fsync the folders it touched."""
    answers: list[int] = []
    touched: dict[int, str] = {}
    subs: dict[tuple[str, bytes], int] = {}  # folders a file keeps from incoming/
    full = False
    folders.look_again()
    try:
        for working_name, folder, final_name in moves:
            if full:
                answers.append(SKIPPED)
                continue
            sub, base = split_name(final_name)
            try:
                dir_fd = folders.destination(folder)
                if sub:
                    key = (folder, sub)
                    if key not in subs:
                        # Made (durably) by the loop when it chose this destination;
                        # made again if it went since (recovery moving an old batch).
                        subs[key] = open_folder(dir_fd, sub, 0o750)
                    dir_fd = subs[key]
            except OSError as exc:
                raise FatalIOError(f"cannot open {folder}: {exc.strerror}") from exc
            err = _rename(folders.working, working_name, dir_fd, base)
            if err == 0:
                touched[dir_fd] = folder
                crashpoint("finish.renamed")
            full = err in FULL_ERRNOS
            answers.append(err)
        if touched:
            for dir_fd, folder in touched.items():
                fsync_dir(dir_fd, folder)
            fsync_dir(folders.working, "working")
    finally:
        for fd in subs.values():
            os.close(fd)
    folders.close_old_days()
    return answers


class Ticket:
    """A request sent to the mover; its answer once read."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: Any = None
        self.done = False


class Mover:
    """The daemon's side: send batches of moves, read the answers in order."""

    def __init__(self, spool: Spool, keep_fds: Sequence[int] = ()) -> None:
        dirs = (spool.dirs.incoming, spool.dirs.working, spool.dirs.archive, spool.dirs.failed)
        try:
            self._proc: subprocess.Popen[bytes]
            self._proc, self._requests, self._answers = start_helper(
                "dropline.spool.mover", [str(os.getpid()), *map(str, dirs)], (*dirs, *keep_fds)
            )
        except OSError as exc:
            raise FatalIOError(f"cannot start the mover process: {exc}") from exc
        self._waiting: deque[Ticket] = deque()

    def send(self, kind: str, moves: Sequence[Any]) -> Ticket:
        """Hand a batch over ("claim" or "finish"); the answer is read with ``answer()``."""
        ticket = Ticket()
        try:
            self._requests.send((kind, list(moves)))
        except OSError as exc:
            raise self._died() from exc
        self._waiting.append(ticket)
        return ticket

    def answer(self, ticket: Ticket) -> Any:
        """The answer to TICKET, waiting for it (and reading earlier ones first)."""
        while not ticket.done:
            first = self._waiting[0]
            try:
                status, payload = self._answers.recv()
            except (EOFError, OSError) as exc:
                raise self._died() from exc
            self._waiting.popleft()
            if status != "ok":
                raise FatalIOError(str(payload))
            first.answer, first.done = payload, True
        return ticket.answer

    def _died(self) -> FatalIOError:
        import subprocess

        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
        return FatalIOError(f"the mover process ended ({how})")

    def close(self) -> None:
        """Let the mover finish what it was given and end; wait for it."""
        import subprocess

        self._requests.close()
        self._answers.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _die_with_parent(parent: int) -> bool:
    """Ask the kernel to kill us when the daemon dies; False if it already has."""
    with contextlib.suppress(AttributeError, OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    return os.getppid() == parent


def main(argv: Sequence[str]) -> None:
    """The mover's loop: a request in, its answer out, until the daemon closes the pipe."""
    req_fd, res_fd, parent, incoming, working, archive, failed = (int(a) for a in argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if not _die_with_parent(parent):
        return
    crash_together_with(parent)  # a crash point armed by the tests kills the daemon too
    folders = Folders(incoming, working, archive, failed)
    # Requests are read as they come, by a thread of their own: the daemon never
    # waits to send while the mover waits to answer (a batch of long names fills
    # a pipe's buffer), so neither can block the other for good.
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(Pipe(req_fd), requests), daemon=True).start()
    answers = Pipe(res_fd)
    while (request := requests.get()) is not None:
        kind, moves = request
        try:
            answer: tuple[str, Any] = (
                "ok",
                claim(folders, moves) if kind == "claim" else finish(folders, moves),
            )
        except FatalIOError as exc:  # the disk's state is unknown: the daemon stops
            answer = ("fatal", str(exc))
        try:
            answers.send(answer)
        except OSError:
            return


def _read_requests(pipe: Pipe, requests: queue.SimpleQueue[Any]) -> None:
    while True:
        try:
            requests.put(pipe.recv())
        except (EOFError, OSError):
            requests.put(None)  # the daemon closed the pipe (or is gone): end quietly
            return


if __name__ == "__main__":
    main(sys.argv[1:])
