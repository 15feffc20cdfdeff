"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING).

Through sdnotify, which swallows every error and encodes Latin-1 only: so this
module creates it in debug mode to see failures (logged once, never fatal) and
sends only ASCII.  Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sdnotify

from .log import escape_text, get_logger


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
            except OSError as exc:
                self._warn(exc)
        self.watchdog_interval = self._watchdog_interval(env)
        self._last_status = ""

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

    def _send(self, message: str) -> None:
        if self._sd is None:
            return
        try:
            self._sd.notify(message)
        except OSError as exc:
            self._warn(exc)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={_ascii(status)}" if status else ""))

    def status(self, text: str) -> None:
        safe = _ascii(text)
        if safe != self._last_status:
            self._last_status = safe
            self._send(f"STATUS={safe}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")
