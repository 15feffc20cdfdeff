"""What every part of the loop shares: the configuration in force, the two
clocks of the pass, and where events go."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..events import FileEvents
from ..pipeline import Routes


@dataclass
class LoopContext:
    """Shared by the parts of one daemon; a reload swaps ``config`` and ``routes``.

    Two clocks: ``now`` (wall time, passed to each pass) for what is recorded
    and survives a restart, ``mono`` (monotonic) for every timer of the loop,
    so a step of the wall clock never stalls the watchdog, STATUS, settle
    times or retries.
    """

    config: Config
    routes: Routes
    log: Any  # structlog BoundLogger
    events: FileEvents
    mono: float = field(default_factory=time.monotonic)
    passes: int = 0  # passes of the loop so far
    stopping_since: float | None = None  # monotonic: when a stop was asked

    @property
    def stopping(self) -> bool:
        return self.stopping_since is not None

    def open_recheck(self) -> float:
        """Seconds before a file found held open for writing is looked at again (its
        close event brings it back sooner; this is for a close inotify did not tell)."""
        return max(self.config.settle_time, _OPEN_RECHECK)


_OPEN_RECHECK = 0.5  # seconds at least between two looks at a file held open
MAX_REMEMBERED = 100_000  # names remembered so that each is logged once (refused, held)


def remember(seen: collections.OrderedDict[bytes, Any], name: bytes, limit: int) -> None:
    """Keep NAME as the newest of SEEN, forgetting the oldest beyond LIMIT."""
    seen.move_to_end(name)
    if len(seen) > limit:
        seen.popitem(last=False)
