"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING), never blocking.

Through sdnotify, which swallows every error and encodes Latin-1 only: so this
module creates it in debug mode to see failures and sends only ASCII.  Outside
systemd (no NOTIFY_SOCKET) every call is a no-op.

sdnotify's socket blocks in ``sendto`` while the reader's queue is full (PID 1
stops reading during a ``daemon-reload`` on a busy host; the queue holds
``net.unix.max_dgram_qlen`` datagrams, from every service).  A blocked send
would hold the whole loop, and every file with it, so the socket is made
non-blocking and a full queue (EAGAIN) is handled here:

- STATUS= lines are coalesced: only the newest matters.  One that finds the
  queue full is dropped; the loop sends the current line again at its next
  status update.
- READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 are kept, in order, and
  retried from the loop (``due``, ``retry``) until the queue has room: systemd
  reads a service's state from their order (READY=1 after RELOADING=1 ends a
  reload).  One pending WATCHDOG=1 is as good as several.
- Any other error is logged once (``notify.failed``), never fatal; the message
  that met it is given up.
- At exit (``close``) what still waits gets a short, bounded last try.
"""

from __future__ import annotations

import collections
import errno
import os
import time
from typing import Any, Literal

import sdnotify

from .escaping import escape_text
from .log import get_logger

RETRY_EVERY = 0.02  # seconds between tries while a message waits for room
MAX_PENDING = 256  # ordered messages kept at most (the oldest go first past it)
CLOSE_TIMEOUT = 0.5  # seconds of the last try at exit

# A datagram that could not go now but may later: the reader's queue (or our
# send buffer) is full.
_FULL = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS}

Outcome = Literal["sent", "full", "failed"]


def _ascii(text: str) -> str:
    return escape_text(text).encode("ascii", "backslashreplace").decode("ascii")


class Notifier:
    """Talks to systemd when NOTIFY_SOCKET is set; silent otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        self._log = get_logger()
        self._warned = False
        self._sd: Any = None
        if env.get("NOTIFY_SOCKET"):
            try:
                self._sd = sdnotify.SystemdNotifier(debug=True)
                self._sd.socket.setblocking(False)
            except OSError as exc:
                self._sd = None
                self._warn(exc)
        self.watchdog_interval = self._watchdog_interval(env)
        # Ordered messages not sent yet, oldest first: (datagram, the STATUS it carries).
        self._pending: collections.deque[tuple[str, str | None]] = collections.deque()
        self._retry_at = 0.0
        self._status: str | None = None  # the newest STATUS not sent yet
        self._status_sent = ""  # the STATUS systemd last received from us

    @staticmethod
    def _watchdog_interval(env: dict[str, str]) -> float | None:
        """Half of WATCHDOG_USEC, in seconds, if the watchdog is meant for us."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            self._log.warning("notify.failed", error=str(exc))

    # --- sending ----------------------------------------------------------------

    def _try(self, message: str) -> Outcome:
        """One non-blocking send of MESSAGE."""
        try:
            self._sd.notify(message)
        except OSError as exc:
            if exc.errno in _FULL:
                return "full"
            self._warn(exc)
            return "failed"
        return "sent"

    def _queue(self, message: str, status: str | None = None, *, once: bool = False) -> None:
        """Send MESSAGE after every message still waiting (never before one)."""
        if self._sd is None:
            return
        if once and any(waiting == message for waiting, _ in self._pending):
            return
        self._pending.append((message, status))
        if len(self._pending) > MAX_PENDING:
            # Only a reader gone for good lets this many pile up: the oldest matter least.
            self._pending.popleft()
            self._warn(OSError(errno.EAGAIN, "notify socket full; oldest message dropped"))
        self.flush()

    def flush(self) -> None:
        """Send what waits, oldest first, until the queue is full; then the newest STATUS."""
        if self._sd is None:
            return
        while self._pending:
            message, status = self._pending[0]
            outcome = self._try(message)
            if outcome == "full":
                self._retry_at = time.monotonic() + RETRY_EVERY
                return
            self._pending.popleft()
            if outcome == "sent" and status is not None:
                self._status_sent = status
        if self._status is not None:
            status, self._status = self._status, None
            # Sent, or dropped when full: the loop's next status() offers the line again.
            if self._try(f"STATUS={status}") != "full":
                self._status_sent = status

    def due(self) -> float | None:
        """When (monotonic) the loop should call ``retry``; None when nothing waits."""
        return self._retry_at if self._pending else None

    def retry(self, mono: float | None = None) -> None:
        """Try again what waits, if its time has come.  Cheap when nothing does."""
        if not self._pending:
            return
        if (time.monotonic() if mono is None else mono) >= self._retry_at:
            self.flush()

    @property
    def pending(self) -> list[str]:
        """The ordered messages not sent yet, oldest first."""
        return [message for message, _ in self._pending]

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """A last try, for at most TIMEOUT seconds, for what waits (STOPPING=1); then close."""
        if self._sd is None:
            return
        deadline = time.monotonic() + timeout
        self.flush()
        while self._pending and time.monotonic() < deadline:
            time.sleep(min(RETRY_EVERY, max(0.0, deadline - time.monotonic())))
            self.flush()
        if self._pending:
            self._log.warning(
                "notify.unsent",
                detail=f"the notify socket stayed full for {timeout:g} s at exit",
                messages=[message.split("\n", 1)[0] for message in self.pending],
            )
        self._sd.socket.close()
        self._sd = None
        self._pending.clear()

    # --- the protocol --------------------------------------------------------------

    def ready(self, status: str = "") -> None:
        safe = _ascii(status) if status else None
        if safe is not None:
            self._status = None  # READY=1 carries a newer line than one not sent yet
        self._queue("READY=1" + (f"\nSTATUS={safe}" if safe else ""), safe)

    def status(self, text: str) -> None:
        if self._sd is None:
            return
        safe = _ascii(text)
        if safe == self._status_sent:
            self._status = None  # systemd shows it already
            return
        self._status = safe  # the newest replaces one not sent yet
        if not self._pending:
            self.flush()

    def watchdog(self) -> None:
        self._queue("WATCHDOG=1", once=True)

    def stopping(self) -> None:
        self._queue("STOPPING=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._queue(f"RELOADING=1\nMONOTONIC_USEC={usec}")
