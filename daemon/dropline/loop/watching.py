"""The inotify watch on incoming/, kept in place: a watch that ends while
incoming/ is still the folder it watched is replaced (then a rescan finds
what arrived unseen); one that keeps failing, or a folder that changed,
ends the daemon.  Never go on without a watch."""

from __future__ import annotations

import collections
import os
import queue
from typing import Any

from ..errors import FatalIOError
from ..watch import IncomingWatch, WatchLost
from .context import LoopContext

_WATCH_CHECK_EVERY = 1.0  # seconds between looks at the inotify reader thread
# A watch that keeps failing is not replaced for ever: the daemon exits, systemd restarts it.
_WATCH_FAILURES_ALLOWED = 5
_WATCH_FAILURE_WINDOW = 60.0


class WatchKeeper:
    """Owns the watch on incoming/ and its replacements."""

    def __init__(self, ctx: LoopContext, inbox: queue.SimpleQueue[Any]) -> None:
        self.ctx = ctx
        self.inbox = inbox
        st = os.stat(ctx.config.incoming)
        self.incoming_id = (st.st_dev, st.st_ino)
        self.watch: IncomingWatch | None = IncomingWatch(ctx.config.incoming, inbox)
        self.next_check = 0.0
        self.failures: collections.deque[float] = collections.deque()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def lost(self, message: WatchLost) -> bool:
        """The reader thread said it ended; True if a new watch was placed."""
        if self.watch is None or message.generation != self.watch.generation:
            return False  # a watch already replaced
        return self._replace(message.reason)

    def check(self) -> bool:
        """About once a second: is the reader still reading?  True if a new watch
        was placed (then files may have arrived unseen: rescan)."""
        if self.watch is None or self.ctx.mono < self.next_check:
            return False
        self.next_check = self.ctx.mono + _WATCH_CHECK_EVERY
        reason = self.watch.failure()
        return reason is not None and self._replace(reason)

    def _replace(self, reason: str) -> bool:
        if self.ctx.stopping or self.watch is None:
            return False
        self.ctx.log.error("watch.failed", reason=reason)
        old = self.watch
        old.close()
        now = self.ctx.mono
        self.failures.append(now)
        while self.failures and self.failures[0] < now - _WATCH_FAILURE_WINDOW:
            self.failures.popleft()
        if len(self.failures) > _WATCH_FAILURES_ALLOWED:
            raise FatalIOError(
                f"{reason}; the watch on incoming/ failed {len(self.failures)} times "
                f"in {_WATCH_FAILURE_WINDOW:.0f} s"
            )
        incoming = self.ctx.config.incoming
        try:
            st = os.stat(incoming, follow_symlinks=False)
        except OSError as exc:
            raise FatalIOError(f"{reason}; incoming/ is gone: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != self.incoming_id:
            raise FatalIOError(f"{reason}; incoming/ is no longer the folder dropline watched")
        try:
            self.watch = IncomingWatch(incoming, self.inbox, old.generation + 1)
        except OSError as exc:
            raise FatalIOError(f"{reason}; the watch could not be placed again: {exc}") from None
        # The new watch first, then the scan: nothing that arrived in between is missed.
        self.ctx.log.info("watch.restored", generation=self.watch.generation)
        return True
