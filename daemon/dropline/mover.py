"""The mover: a helper process that does the file-system half of each batch.

At full speed the loop's own work (rows, log lines, ids) and the kernel's
(renames, directory fsyncs, reading each claimed file to hash it) cost
about the same; done one after the other in one process they leave the
second core idle.  So the daemon hands each batch's renames, fsyncs and
reads to this process and records another batch meanwhile.

The mover decides nothing.  The loop commits every intent before it asks
(rows "claiming" or "finishing"), the mover does exactly the moves asked,
in order, makes them durable, and answers with what happened to each
(an errno; for a claim, what opening and reading the file found).  A crash
of either process leaves what a crash of the single loop would: recovery
completes or undoes each recorded intent.

It is ``python -m dropline.mover`` (a fresh interpreter, not a fork of the
threaded daemon), holding the daemon's directory descriptors and its lock
on the state directory: a new daemon cannot start recovery while a mover
of an old one still moves files.  It ignores SIGTERM and SIGINT (the
daemon decides when to stop; the mover ends when its pipe closes) and dies
with the daemon (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from .crashpoints import crash_together_with, crashpoint, fault
from .errors import FatalIOError
from .spool import DIR_FLAGS, FULL_ERRNOS, FileRead, Spool, read_file, rename_noreplace

SKIPPED = -1  # not tried: an earlier move of the batch met a full filesystem

# A claim: (name in incoming/, name in working/) -> (errno, what reading it found).
ClaimMove = tuple[bytes, bytes]
ClaimAnswer = tuple[int, FileRead | None]
# A finish: (name in working/, destination folder, final name) -> errno.  The
# folder is "failed", "archive" or "archive/DAY" (a day folder that exists).
FinishMove = tuple[bytes, str, bytes]

_ACCEPTED = (0, errno.ENOENT, errno.EEXIST, *FULL_ERRNOS)


class Folders:
    """The data folders' descriptors as the mover uses them (day folders opened as needed)."""

    def __init__(self, incoming: int, working: int, archive: int, failed: int) -> None:
        self.incoming = incoming
        self.working = working
        self.archive = archive
        self.failed = failed
        self._days: dict[str, int] = {}

    def destination(self, folder: str) -> int:
        if folder == "failed":
            return self.failed
        if folder == "archive":
            return self.archive
        day = folder.removeprefix("archive/")
        fd = self._days.get(day)
        if fd is None:
            fd = os.open(day, DIR_FLAGS, dir_fd=self.archive)
            for old in sorted(self._days)[:-2]:  # a few days open; old ones closed
                os.close(self._days.pop(old))
            self._days[day] = fd
        return fd


class MoverError(Exception):
    """A move or fsync failed in a way that leaves the disk's state unknown."""


def _rename(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> int:
    try:
        rename_noreplace(src_dir, src, dst_dir, dst)
    except OSError as exc:
        if exc.errno not in _ACCEPTED:
            raise MoverError(f"rename of {src!r}: {exc.strerror}") from exc
        return exc.errno
    return 0


def _fsync(fd: int, label: str) -> None:
    try:
        fault("spool.fsync")
        os.fsync(fd)
    except OSError as exc:
        # Never retried: a failed fsync may have dropped the dirty pages.
        raise MoverError(f"fsync of {label} failed: {exc}") from exc


def claim(folders: Folders, moves: Sequence[ClaimMove], max_size: int) -> list[ClaimAnswer]:
    """Rename each file into working/, fsync both folders once, then open and read each
    (a file over MAX_SIZE bytes is not read)."""
    answers: list[ClaimAnswer] = []
    full = False
    for name, working_name in moves:
        if full:
            answers.append((SKIPPED, None))
            continue
        err = _rename(folders.incoming, name, folders.working, working_name)
        if err == 0:
            crashpoint("claim.renamed")
        full = err in FULL_ERRNOS
        answers.append((err, None))
    if any(err == 0 for err, _ in answers):
        _fsync(folders.working, "working")
        _fsync(folders.incoming, "incoming")
    return [
        (err, read_file(folders.working, working_name, max_size) if err == 0 else None)
        for (err, _), (_, working_name) in zip(answers, moves, strict=True)
    ]


def finish(folders: Folders, moves: Sequence[FinishMove]) -> list[int]:
    """Rename each file from working/ to its end, then fsync the folders it touched."""
    answers: list[int] = []
    touched: dict[int, str] = {}
    full = False
    for working_name, folder, final_name in moves:
        if full:
            answers.append(SKIPPED)
            continue
        try:
            dir_fd = folders.destination(folder)
        except OSError as exc:
            raise MoverError(f"cannot open {folder}: {exc.strerror}") from exc
        err = _rename(folders.working, working_name, dir_fd, final_name)
        if err == 0:
            touched[dir_fd] = folder
            crashpoint("finish.renamed")
        full = err in FULL_ERRNOS
        answers.append(err)
    if touched:
        for dir_fd, folder in touched.items():
            _fsync(dir_fd, folder)
        _fsync(folders.working, "working")
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
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        dirs = (spool.incoming_fd, spool.working_fd, spool.archive_fd, spool.failed_fd)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        argv = [sys.executable, "-m", "dropline.mover", str(req_r), str(res_w), str(os.getpid())]
        argv += map(str, dirs)
        try:
            self._proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                pass_fds=(req_r, res_w, *dirs, *keep_fds),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            for fd in (req_w, res_r):
                os.close(fd)
            raise FatalIOError(f"cannot start the mover process: {exc}") from exc
        finally:
            os.close(req_r)
            os.close(res_w)
        self._requests = Connection(req_w, readable=False)
        self._answers = Connection(res_r, writable=False)
        self._waiting: deque[Ticket] = deque()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, kind: str, moves: Sequence[Any], max_size: int = 0) -> Ticket:
        """Hand a batch over ("claim": files over MAX_SIZE are not read, or "finish");
        the answer is read with ``answer()``."""
        ticket = Ticket()
        try:
            self._requests.send((kind, list(moves), max_size))
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
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
        return FatalIOError(f"the mover process ended ({how})")

    def close(self) -> None:
        """Let the mover finish what it was given and end; wait for it."""
        for conn in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                conn.close()
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
    requests = Connection(req_fd, writable=False)
    answers = Connection(res_fd, readable=False)
    while True:
        try:
            kind, moves, max_size = requests.recv()
        except (EOFError, OSError):
            return  # the daemon closed the pipe (or is gone): end quietly
        try:
            answer: tuple[str, Any] = (
                "ok",
                claim(folders, moves, max_size) if kind == "claim" else finish(folders, moves),
            )
        except MoverError as exc:
            answer = ("fatal", str(exc))
        try:
            answers.send(answer)
        except OSError:
            return


if __name__ == "__main__":
    main(sys.argv[1:])
