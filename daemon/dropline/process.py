"""Run the external command of a pipeline stage, bounded in time, output and processes.

The command runs in its own session (so it leads its own process group), with
stdin from /dev/null and stdout and stderr in one anonymous temporary file
(``spawn.py`` starts it).
When it ends, for whatever reason, whatever is left of its process group is
killed, so a stage never leaves processes behind.  Its end is waited for on a
pidfd: the worker thread hears of it at once and otherwise wakes only to look
at the cancel event.

This module must never run a shell (argv is executed as given, file names are
data), never read a command's output through a pipe (a grandchild holding the
pipe open would make us hang), never hold more than ``output_cap`` bytes of
output in memory, and never signal a process group whose leader it has already
reaped (the number could by then belong to someone else's group).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from . import spawn

__all__ = ["CommandResult", "describe", "run_command"]

# exec failures that mean "there is no such program" (127) or "it cannot be
# executed" (126), as a POSIX shell reports them.  Any other OSError from
# starting (EAGAIN from fork, EMFILE, ...) is the host's problem, not the
# command's, and propagates.
_NOT_FOUND = frozenset({errno.ENOENT, errno.ENOTDIR})
_NOT_EXECUTABLE = frozenset({errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR})

_POLL_MAX = 0.05  # the cancel event is looked at least this often (seconds)
_WAIT_MAX = 60.0  # one poll() at most this long: its timeout is an int of milliseconds

_Ending = Literal["exited", "timed_out", "cancelled"]


@dataclass(frozen=True)
class CommandResult:
    """How a command ended and what it wrote."""

    returncode: int | None  # exit status; None if a signal ended it or we stopped it
    signal: int | None  # the signal that ended it, if any
    timed_out: bool
    cancelled: bool
    output: str  # stdout and stderr merged; head and tail if longer than output_cap
    output_bytes: int  # everything the command wrote, kept or not
    duration: float  # seconds, from start to reaped
    started: bool = True  # False: the program could not be started (127, 126)


def run_command(
    argv: Sequence[bytes],
    *,
    env: Mapping[bytes, bytes],
    cwd: str | bytes | None,
    timeout: float,
    output_cap: int = 64 * 1024,
    kill_grace: float = 1.0,
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run argv (no shell) with exactly env, for at most timeout seconds.

    On timeout, or when cancel is set, the process group gets SIGTERM, then
    SIGKILL after kill_grace seconds.  A program that cannot be started gives
    returncode 127 (not found) or 126 (not executable) with the error as output.
    """
    if not argv:
        raise ValueError("argv must name a program")
    if output_cap < 0:
        raise ValueError(f"output_cap must be >= 0, not {output_cap}")
    start = time.monotonic()
    if cancel is not None and cancel.is_set():
        # Starting a (possibly non-idempotent) stage we already know is abandoned
        # would only create work to undo.
        return CommandResult(None, None, False, True, "", 0, 0.0)
    out = _output_file(tempfile.gettempdir())
    try:
        try:
            child = spawn.start(argv, env=env, cwd=cwd, stdin=_devnull(), output=out)
        except OSError as exc:
            return _start_failure(exc, start)
        ending, status = _see_through(child, start + timeout, kill_grace, cancel)
        duration = time.monotonic() - start
        output, total = _read_capped(out, output_cap)
    finally:
        os.close(out)
    sig = -status if status < 0 else None
    stopped = ending != "exited"
    return CommandResult(
        returncode=None if stopped or sig is not None else status,
        signal=sig,
        timed_out=ending == "timed_out",
        cancelled=ending == "cancelled",
        output=output,
        output_bytes=total,
        duration=duration,
    )


def _see_through(
    child: spawn.Child,
    deadline: float,
    kill_grace: float,
    cancel: threading.Event | None,
) -> tuple[_Ending, int]:
    """Wait for child to end, stopping it at deadline or on cancel; kill what is
    left of its group and reap it.  Returns how it ended and its wait status."""
    ending: _Ending = "exited"
    exit_fd = _exit_fd(child.pid)
    try:
        ending = _wait_exited(child.pid, exit_fd, deadline, cancel)
        if ending != "exited":
            _signal_group(child.pid, signal.SIGTERM)
            _wait_exited(child.pid, exit_fd, time.monotonic() + kill_grace, None)
    finally:
        try:
            # Also on success and on exceptions: grandchildren left in the group
            # (daemonised helpers, a `sleep &`) must not outlive the stage.  The
            # leader is still unreaped here, so its pid, which is the group's id,
            # cannot have been reused.
            _signal_group(child.pid, signal.SIGKILL)
            status = child.reap()
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
    return ending, status


def describe(result: CommandResult) -> str:
    """One line for a log or a failure reason: "exit status 3", "cancelled", ..."""
    if result.cancelled:
        return "cancelled"
    if result.timed_out:
        return f"timed out after {result.duration:.1f} s"
    if result.signal is not None:
        try:
            name = signal.Signals(result.signal).name
        except ValueError:
            return f"killed by signal {result.signal}"
        return f"killed by signal {result.signal} ({name})"
    return f"exit status {result.returncode}"


def _start_failure(exc: OSError, start: float) -> CommandResult:
    """Turn an exec failure into the result a shell would give, or re-raise."""
    if exc.errno in _NOT_FOUND:
        code = 127
    elif exc.errno in _NOT_EXECUTABLE:
        code = 126
    else:
        raise exc
    text = str(exc)
    return CommandResult(
        returncode=code,
        signal=None,
        timed_out=False,
        cancelled=False,
        output=text,
        output_bytes=len(text.encode()),
        duration=time.monotonic() - start,
        started=False,
    )


def _exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when pid exits (a pidfd), or None without one.

    Polling with waitid instead (the fallback) wakes the worker at every look
    (1, 2, 4 ms ... apart), each time taking the interpreter lock from the main
    loop, and hears of a short command's end a few milliseconds late.
    """
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3, or already reaped (SIGCHLD ignored)
        return None


def _wait_exited(
    pid: int, exit_fd: int | None, deadline: float, cancel: threading.Event | None
) -> _Ending:
    """Wait until pid has exited, deadline has passed or cancel is set.

    The child is left unreaped (a pidfd only tells; waitid with WNOWAIT) so
    that its process group can still be signalled safely afterwards.
    """
    if exit_fd is None:
        return _poll_exited(pid, deadline, cancel)
    poller = select.poll()
    poller.register(exit_fd, select.POLLIN)
    while True:
        # cancel, a threading.Event, has no descriptor to wait on beside the
        # pidfd: it is looked at every _POLL_MAX, a long command's only cost.
        step = min(deadline - time.monotonic(), _POLL_MAX if cancel is not None else _WAIT_MAX)
        if poller.poll(max(0, math.ceil(step * 1000))):
            return "exited"
        if cancel is not None and cancel.is_set():
            return "cancelled"
        if time.monotonic() >= deadline:
            return "timed_out"


def _poll_exited(pid: int, deadline: float, cancel: threading.Event | None) -> _Ending:
    """_wait_exited without a pidfd: waitid(WNOHANG | WNOWAIT) with delays that
    grow from 1 ms to _POLL_MAX, as in Popen.wait, so short commands are not
    slowed down."""
    delay = 0.0005
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return "exited"
        except ChildProcessError:
            return "exited"  # someone else reaped it (SIGCHLD ignored); it is gone
        if cancel is not None and cancel.is_set():
            return "cancelled"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timed_out"
        delay = min(delay * 2, remaining, _POLL_MAX)
        if cancel is not None:
            cancel.wait(delay)  # returns at once when cancel is set
        else:
            time.sleep(delay)


def _output_file(directory: str) -> int:
    """A new anonymous file in directory for a command's output, unlinked from the start."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):  # no O_TMPFILE here (or on this filesystem)
        fd, name = tempfile.mkstemp(dir=directory)
        os.unlink(name)
        return fd


_devnull_fd: int | None = None
_devnull_lock = threading.Lock()


def _devnull() -> int:
    """One /dev/null descriptor for every command's stdin, opened once (close-on-exec:
    each child gets it as its stdin only)."""
    global _devnull_fd
    with _devnull_lock:
        if _devnull_fd is None:
            _devnull_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return _devnull_fd


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send sig to the whole process group; an empty group is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _read_capped(fd: int, cap: int) -> tuple[str, int]:
    """Return (head and tail of the file, at most cap bytes kept; its total size).

    pread leaves the shared file offset alone: a process that escaped the group
    may still be appending.
    """
    total = os.fstat(fd).st_size
    if total <= cap:
        return _pread_exact(fd, total, 0).decode("utf-8", errors="replace"), total
    head_len = cap // 2
    tail_len = cap - head_len
    head = _pread_exact(fd, head_len, 0)
    tail = _pread_exact(fd, tail_len, total - tail_len)
    marker = f"\n[... {total - head_len - tail_len} bytes omitted ...]\n"
    # Decoded apart so a character cut at either edge costs one U+FFFD, not the marker.
    text = head.decode("utf-8", errors="replace") + marker + tail.decode("utf-8", errors="replace")
    return text, total


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read size bytes at offset, fewer only at end of file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
