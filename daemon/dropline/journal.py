"""journald's native protocol: each log event as a journal entry with its own fields.

Used when stderr is the journal (``$JOURNAL_STREAM`` names it), so that
``journalctl -u dropline ITEM=<id>`` or ``EVENT=file.failed`` filters events.
Each field of an event becomes a journal field named by upper-casing its key
(ITEM, FILE, PIPELINE, STAGE, ...), plus EVENT, MESSAGE, PRIORITY and
SYSLOG_IDENTIFIER.

Written here rather than taken from a library: the protocol is a datagram of
``KEY=value`` lines (systemd's "Native Journal Protocol"); systemd-python
builds only with libsystemd's headers and a compiler, and cysystemd ships
wheels for few platforms, either of which would make every install depend on
the machine.  If journald is not there (no socket, an entry it refuses), the
event's MESSAGE goes to stderr instead.

The sender never blocks its caller (the daemon's loop, or a stage's thread).
journald reads its socket in one thread and can stall for seconds (flushing
the runtime journal to /var, rotating, a slow disk); a blocking ``sendto``
then held the loop, its files and its watchdog pings.  So the socket is
non-blocking, and an entry the socket cannot take now waits in a bounded
queue, in order, sent again by ``flush()`` (the loop calls it every pass and
every 20 ms while entries wait).  While the queue holds more than half its
bytes, ``behind()`` is true and the daemon claims no new file: the entries
of the files in flight still fit, so the end of every file reaches the
journal, and dropline goes as fast as journald reads, never faster.  Past
the whole bound, progress entries (``file.claimed``, ``stage.started``, ...)
are dropped; past four times it, any entry is.  Either way they are counted,
and once the queue is empty a ``journal.dropped`` entry says how many.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, TextIO

from .escaping import field_text
from .messages import describe, message_id

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_KEY_OK = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD = 64 * 1024  # a file name or an error; keeps every entry one datagram
# Bytes of entries waiting for journald, at most (then progress entries are
# dropped); at four times this any entry is.  Some 25,000 entries of a file's
# life: at 200 files/s, over half a minute of a journald that does not read.
QUEUE_BYTES = 8 << 20
# Entries that are never dropped before the hard bound: the end of each file
# (the journal's promise), and whatever is a warning or worse (PRIORITY <= 4).
END_EVENTS = frozenset({"file.archived", "file.failed", "file.vanished"})
# journald's own answers that mean "not now" rather than "never".
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when systemd connected our stderr to the journal ($JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def field_name(key: str) -> str:
    """A journal field name for KEY: upper case, [A-Z0-9_], not starting with _ or a digit."""
    name = _KEY_OK.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name[:64]


def _encode(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "backslashreplace")[:_MAX_FIELD]
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class _Entry(NamedTuple):
    datagram: bytes
    keep: bool  # an end of a file, or a warning or worse
    end: bool  # the end of a file
    message: str  # for the fallback stream, should journald refuse it


class JournalSender:
    """Sends entries to journald without ever blocking; see the module's docstring.

    Safe to call from several threads (the loop and the stage threads): one lock
    keeps the entries in the order they were logged.
    """

    def __init__(
        self,
        path: str = JOURNAL_SOCKET,
        fallback: TextIO | None = None,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.path = path
        self.fallback = fallback or sys.stderr
        self.queue_bytes = queue_bytes
        self._sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self._lock = threading.Lock()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # bytes in _queue
        self._behind = False
        self.dropped = 0  # entries dropped since the start, and of them ends of files
        self.dropped_ends = 0
        self._unreported = (0, 0)  # dropped, of them ends: not yet said in the journal

    # --- what the loop asks ------------------------------------------------

    @property
    def waiting(self) -> int:
        """Entries waiting for journald to read."""
        return len(self._queue)

    def behind(self) -> bool:
        """True from half the bound until the queue is down to an eighth: claim nothing."""
        queued = self._queued
        if self._behind:
            self._behind = queued > self.queue_bytes // 8
        else:
            self._behind = queued >= self.queue_bytes // 2
        return self._behind

    # --- sending -------------------------------------------------------------

    def send(self, message: str, level: str, fields: Mapping[str, Any]) -> None:
        """Send one entry now, or queue it behind those waiting; never blocks."""
        priority = _PRIORITY.get(level, 6)
        event = str(fields.get("EVENT", ""))
        parts = [
            _encode("MESSAGE", message),
            _encode("PRIORITY", str(priority)),
            _encode("SYSLOG_IDENTIFIER", "dropline"),
        ]
        if event:
            parts.append(_encode("MESSAGE_ID", message_id(event)))
        for key, value in fields.items():
            if value is None or key in ("level", "timestamp"):
                continue
            parts.append(_encode(field_name(key), field_text(value)))
        end = event in END_EVENTS
        entry = _Entry(b"".join(parts), end or priority <= 4, end, message)
        with self._lock:
            if self._queue or not self._send(entry):
                self._enqueue(entry)
                self._flush()

    def flush(self) -> int:
        """Send what waits, in order, until journald stops taking; returns what still waits."""
        if not self._queue and not self._unreported[0]:
            return 0
        with self._lock:
            self._flush()
            return len(self._queue)

    def close(self, timeout: float = 3.0) -> int:
        """At exit: wait up to TIMEOUT for journald to take what waits; returns what did not."""
        deadline = time.monotonic() + timeout
        while self.flush() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            left = len(self._queue)
            self._sock.close()
            return left

    def _send(self, entry: _Entry) -> bool:
        """Try to hand ENTRY to journald; False when it cannot take it now."""
        try:
            self._sock.sendto(entry.datagram, self.path)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return False
            # No journald (or it refuses this entry): the line goes where stderr goes.
            print(entry.message, file=self.fallback, flush=True)
        return True

    def _enqueue(self, entry: _Entry) -> None:
        size = len(entry.datagram)
        if self._queued + size > self.queue_bytes * (4 if entry.keep else 1):
            self.dropped += 1
            self.dropped_ends += entry.end
            dropped, ends = self._unreported
            self._unreported = (dropped + 1, ends + entry.end)
            return
        self._queue.append(entry)
        self._queued += size

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            if not self._send(queue[0]):
                return
            self._queued -= len(queue.popleft().datagram)
        dropped, ends = self._unreported
        if dropped:
            # Caught up: say what could not be kept, once, as an entry of its own.
            self._unreported = (0, 0)
            fields = {"EVENT": "journal.dropped", "DROPPED": dropped, "ENDS": ends}
            report = describe("journal.dropped", {"dropped": dropped, "ends": ends})
            parts = [
                _encode("MESSAGE", report),
                _encode("PRIORITY", "4"),
                _encode("SYSLOG_IDENTIFIER", "dropline"),
                _encode("MESSAGE_ID", message_id("journal.dropped")),
            ]
            parts += [_encode(key, field_text(value)) for key, value in fields.items()]
            entry = _Entry(b"".join(parts), True, False, report)
            if not self._send(entry):
                self._queue.append(entry)
                self._queued += len(entry.datagram)
