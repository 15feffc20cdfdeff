"""Stages in worker processes: killable at their timeout, bounded in memory, using every core.

A stage run in a thread can neither be killed when it hangs nor kept from
eating the daemon's memory, and CPU-bound stages in threads share one GIL.
So Python stages (by default, ``isolation: process``) and the CPU- or
local-I/O-bound builtins run in a child process of the worker thread (a
fresh interpreter, never a fork of the threaded daemon with its open
database) that builds each stage once and then runs it file after file.

The worker keeps the child's pipe fed (``StageProcess``): the next attempts
are already waiting there when one ends, so the child takes them without a
round trip through the daemon; results come back one by one as each
attempt ends.  How many a child holds is the job's ``ahead``: two (the one
it runs and the next) unless the loop has measured the stage quick enough
for more (``loop/pacing.py``), so that a worker thread, which needs the
interpreter lock the loop holds most of the time, wakes once for several
files rather than once for each.  A stage is built from its options once
per child: each request carries only the attempt, and the stage's options
come with the first request of that stage a child gets.  The child runs
them in order, so the attempt at the head is the one running, and its own
timeout counts from when the one before it ended.  The child is killed and
replaced only at a timeout, after a MemoryError (its ``memory_limit``),
when it dies, or when the daemon stops; the attempts queued behind the one
that ended so are sent again to the new child, which never started them.
What a stage prints goes to a temporary file whose tail joins the error:
never held in memory, never in the journal unbounded.  The child's own
loop is ``isolation_child.py``.

The child never touches the spool or the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .spool.ipc import Pipe, start_helper

if TYPE_CHECKING:
    import subprocess

STOPPED = "cancelled: dropline is stopping"
# Handed to a worker, not begun, then its pipeline was paused (``WorkerPool.withhold``).
WITHHELD = "not begun: its pipeline is paused"
AHEAD = 2  # attempts a child holds at least: the one it runs and the next, in its pipe
MOST_AHEAD = 64  # and at most, for a stage measured quick enough (loop/pacing.py)
_CANCEL_CHECK = 0.25  # seconds between looks at the stop request while a stage runs

# (tag, outcome, error, metadata, seconds it ran: measured by the child, or since it began)
Ended = tuple[Any, str, str, dict[str, Any], float]


@dataclass
class _Flight:
    """One attempt sent to the child, not yet ended."""

    tag: Any  # the caller's: handed back with the result
    stage: str  # the stage's key: the child builds it once
    build: dict[str, Any]  # how to build it, sent with the first request of it
    spec: dict[str, Any]  # the attempt
    timeout: float
    cancel: threading.Event | None


class StageProcess:
    """One child process running stages for one worker thread, fed ahead.

    The child is ``python -m dropline.isolation_child`` on two pipes
    (``spool/ipc.py``); it is started at the first attempt sent to it.
    """

    def __init__(self, log_format: str) -> None:
        self._log_format = log_format
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: Pipe | None = None
        self._results: Pipe | None = None
        self._flights: deque[_Flight] = deque()
        self._unsent = bytearray()  # requests the pipe could not take yet
        self._head_since = 0.0  # when the attempt at the head started to run
        self._built: set[str] = set()  # stages this child was sent the options of
        self._hello = False  # whether the child said it has started
        self.window = AHEAD  # attempts it may hold: the last job's ahead

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def busy(self) -> bool:
        return bool(self._flights)

    def room(self) -> bool:
        """Whether one more attempt may be sent now."""
        return len(self._flights) < self.window

    def start(self, timeout: float) -> bool:
        """Start the child now, before its first attempt, and wait up to TIMEOUT
        for it to have started (its interpreter's start then delays no file):
        whether it has.  OSError if it cannot be started."""
        if self._requests is None:
            self._start()
        if not self._hello and self._results is not None and self._results.poll(timeout):
            try:
                self._hello = self._results.recv() is None
            except (EOFError, OSError):
                self.close()  # dead before its first file: the next one starts another
        return self._hello

    def send(
        self,
        tag: Any,
        stage: tuple[str, dict[str, Any]],
        spec: dict[str, Any],
        timeout: float,
        cancel: Any,
        ahead: int = AHEAD,
    ) -> None:
        """Queue an attempt of STAGE (its key and how to build it) in the child
        (starting one if need be); AHEAD: how many it may hold from now on."""
        if not self._flights:
            self._head_since = time.monotonic()
        self.window = max(1, min(ahead, MOST_AHEAD))
        flight = _Flight(tag, stage[0], stage[1], spec, timeout, cancel)
        self._flights.append(flight)
        if self._requests is None:
            self._start()  # sends every flight, this one included
        else:
            self._write(flight)

    def wait(self, wake: Sequence[int] | None = None) -> list[Ended]:
        """Block until at least one attempt has ended; the attempts that did, in order.

        With WAKE (descriptors), return early, with nothing, once one is
        readable: the caller has a job to send ahead while the head runs.
        """
        ended: list[Ended] = []
        while self._flights and not ended:
            head = self._flights[0]
            deadline = self._head_since + head.timeout
            if any(f.cancel is not None and f.cancel.is_set() for f in self._flights):
                self.close()
                return self._fail_all("failed", STOPPED)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._replace()
                self._flights.popleft()
                error = f"timed out after {head.timeout:g} s (worker process killed)"
                ended.append((head.tag, "timeout", error, {}, head.timeout))
                self._resend()
                break
            ready = self._ready(min(remaining, _CANCEL_CHECK), wake)
            if ready is None:
                return ended  # WAKE: nothing ended yet
            if not ready:
                continue
            results = self._results
            try:
                while results is not None and self._flights:
                    message = results.recv()
                    if message is None:  # the child has started: the head's time begins
                        self._hello = True
                        self._head_since = time.monotonic()
                        if not self._ready(0):
                            break
                        continue
                    outcome, error, metadata, seconds = message
                    flight = self._flights.popleft()
                    self._head_since = time.monotonic()
                    ended.append((flight.tag, outcome, error, metadata, seconds))
                    if error.startswith("MemoryError"):
                        # Its heap may stay grown: a fresh child for the next files.
                        self._replace()
                        self._resend()
                        break
                    if not self._ready(0):
                        break
            except (EOFError, OSError):
                how = self._death()
                flight = self._flights.popleft()
                took = time.monotonic() - self._head_since
                error = f"the stage's worker process died ({how})"
                ended.append((flight.tag, "failed", error, {}, took))
                self._resend()
        return ended

    def _ready(self, timeout: float, wake: Sequence[int] | None = None) -> bool | None:
        """Wait up to TIMEOUT for a result (or the child's end), writing queued
        requests: True if one is there, None if WAKE became readable first."""
        if self._results is None or self._requests is None:
            return True  # recv raises EOFError: handled as a death
        poller = select.poll()
        poller.register(self._results.fd, select.POLLIN)
        if self._unsent:
            poller.register(self._requests.fd, select.POLLOUT)
        for fd in wake or ():
            poller.register(fd, select.POLLIN)
        woken = False
        for fd, _ in poller.poll(max(0.0, timeout) * 1000):
            if fd == self._results.fd:
                return True
            if wake is not None and fd in wake:
                woken = True
            else:
                self._flush()
        return None if woken else False

    def _start(self) -> None:
        proc, requests, results = start_helper("dropline.isolation_child", [self._log_format])
        self._proc, self._requests, self._results = proc, requests, results
        # Never blocked writing while the child is blocked writing a result to us.
        flags = fcntl.fcntl(requests.fd, fcntl.F_GETFL)
        fcntl.fcntl(requests.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._unsent.clear()
        self._built.clear()
        self._hello = False
        for flight in self._flights:
            self._write(flight)

    def _write(self, flight: _Flight) -> None:
        build = None
        if flight.stage not in self._built:
            self._built.add(flight.stage)
            build = flight.build
        data = pickle.dumps((flight.stage, build, flight.spec), pickle.HIGHEST_PROTOCOL)
        self._unsent += len(data).to_bytes(4, "big") + data
        self._flush()

    def _flush(self) -> None:
        if self._requests is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):  # the rest when it has room
            while self._unsent:
                del self._unsent[: os.write(self._requests.fd, self._unsent)]

    def _resend(self) -> None:
        """The attempts still queued go to a new child (the old one never started them)."""
        self._head_since = time.monotonic()
        if self._flights:
            self._start()

    def _replace(self) -> None:
        self.close()

    def _death(self) -> str:
        code = None
        if self._proc is not None:
            with contextlib.suppress(Exception):
                code = self._proc.wait(5)
        self.close()
        return f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"

    def _fail_all(self, outcome: str, error: str) -> list[Ended]:
        ended: list[Ended] = [(f.tag, outcome, error, {}, 0.0) for f in self._flights]
        self._flights.clear()
        return ended

    def close(self) -> None:
        """Kill the child (it may be stuck in a stage) and forget it."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                self._proc.wait(5)
            self._proc = None
        for pipe in (self._requests, self._results):
            if pipe is not None:
                pipe.close()
        self._requests = self._results = None
        self._unsent.clear()
