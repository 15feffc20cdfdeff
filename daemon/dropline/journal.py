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
the machine.  If the socket refuses an entry, the event goes to stderr instead.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any, TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_KEY_OK = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD = 64 * 1024  # a file name or an error; keeps every entry one datagram


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


class JournalSender:
    """Sends entries to journald; falls back to a stream when the socket fails."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        self.path = path
        self.fallback = fallback or sys.stderr
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, message: str, level: str, fields: Mapping[str, Any]) -> None:
        parts = [
            _encode("MESSAGE", message),
            _encode("PRIORITY", str(_PRIORITY.get(level, 6))),
            _encode("SYSLOG_IDENTIFIER", "dropline"),
        ]
        for key, value in fields.items():
            if value is None or key in ("level", "timestamp"):
                continue
            text = value if isinstance(value, str) else repr(value)
            parts.append(_encode(field_name(key), text))
        try:
            self._sock.sendto(b"".join(parts), self.path)
        except OSError:
            print(message, file=self.fallback, flush=True)
