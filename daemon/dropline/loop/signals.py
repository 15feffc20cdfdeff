"""Signals set flags and wake the loop; nothing else happens in a handler (a
handler may run between any two bytecodes of the loop, so it logs nothing and
writes nothing)."""

from __future__ import annotations

import queue
import signal
from typing import Any


class Flags:
    """What the signal handlers ask of the loop, and the inbox that wakes it."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop = False
        self.reload = False

    def request_stop(self) -> None:
        self.stop = True
        self.inbox.put(None)  # SimpleQueue.put is reentrant: safe in a signal handler

    def request_reload(self) -> None:
        self.reload = True
        self.inbox.put(None)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
