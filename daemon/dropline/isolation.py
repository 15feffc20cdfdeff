"""Stages in worker processes: killable at their timeout, bounded in memory, using every core.

A stage run in a thread can neither be killed when it hangs nor kept from
eating the daemon's memory, and CPU-bound stages in threads share one GIL.
So Python stages (by default, ``isolation: process``) and the CPU- or
local-I/O-bound builtins run in a child process of the worker thread (a
fresh interpreter, never a fork of the threaded daemon with its open
database) that builds each stage once and then runs it file after file.

The worker keeps the child's pipe fed (``StageProcess``): the next attempt
is already waiting there when one ends, so the child takes it without a
round trip through the daemon; results come back one by one as each
attempt ends.  The child runs them in order, so the attempt at the head is
the one running, and its own timeout counts from when the one before it
ended.  The child is killed and replaced only at a timeout, after a
MemoryError (its ``memory_limit``), when it dies, or when the daemon stops;
the attempts queued behind the one that ended so are sent again to the new
child, which never started them.  What a stage prints goes to a temporary
file whose tail joins the error: never held in memory, never in the journal
unbounded.  The child's own loop is ``isolation_child.py``.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .spool.ipc import Pipe, start_helper

if TYPE_CHECKING:
    import subprocess

AHEAD = 2  # attempts a child holds: the one it runs and the next, waiting in its pipe
_CANCEL_CHECK = 0.25  # seconds between looks at the stop request while a stage runs

Ended = tuple[Any, str, str, dict[str, Any]]  # (tag, outcome, error, metadata)


@dataclass
class _Flight:
    """One attempt sent to the child, not yet ended."""

    tag: Any  # the caller's: handed back with the result
    spec: dict[str, Any]
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def busy(self) -> bool:
        return bool(self._flights)

    def room(self) -> bool:
        """Whether one more attempt may be sent now."""
        return len(self._flights) < AHEAD

    def send(self, tag: Any, spec: dict[str, Any], timeout: float, cancel: Any) -> None:
        """Queue an attempt in the child (starting one if need be)."""
        if not self._flights:
            self._head_since = time.monotonic()
        self._flights.append(_Flight(tag, spec, timeout, cancel))
        if self._requests is None:
            self._start()  # sends every flight, this one included
        else:
            self._write(spec)

    def wait(self, wake: int | None = None) -> list[Ended]:
        """Block until at least one attempt has ended; the attempts that did, in order.

        With WAKE (a descriptor), return early, with nothing, once it is
        readable: the caller has a job to send ahead while the head runs.
        """
        ended: list[Ended] = []
        while self._flights and not ended:
            head = self._flights[0]
            deadline = self._head_since + head.timeout
            if any(f.cancel is not None and f.cancel.is_set() for f in self._flights):
                self.close()
                return self._fail_all("failed", "cancelled: dropline is stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._replace()
                self._flights.popleft()
                error = f"timed out after {head.timeout:g} s (worker process killed)"
                ended.append((head.tag, "timeout", error, {}))
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
                    outcome, error, metadata = results.recv()
                    flight = self._flights.popleft()
                    self._head_since = time.monotonic()
                    ended.append((flight.tag, outcome, error, metadata))
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
                ended.append((flight.tag, "failed", f"the stage's worker process died ({how})", {}))
                self._resend()
        return ended

    def _ready(self, timeout: float, wake: int | None = None) -> bool | None:
        """Wait up to TIMEOUT for a result (or the child's end), writing queued
        requests: True if one is there, None if WAKE became readable first."""
        if self._results is None or self._requests is None:
            return True  # recv raises EOFError: handled as a death
        poller = select.poll()
        poller.register(self._results.fd, select.POLLIN)
        if self._unsent:
            poller.register(self._requests.fd, select.POLLOUT)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        woken = False
        for fd, _ in poller.poll(max(0.0, timeout) * 1000):
            if fd == self._results.fd:
                return True
            if fd == wake:
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
        for flight in self._flights:
            self._write(flight.spec)

    def _write(self, spec: dict[str, Any]) -> None:
        data = pickle.dumps(spec, pickle.HIGHEST_PROTOCOL)
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
        ended: list[Ended] = [(f.tag, outcome, error, {}) for f in self._flights]
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
