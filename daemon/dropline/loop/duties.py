"""Side duties of the loop, each with its own next-due time: free space,
journald keeping up, STATUS=, WATCHDOG=1, the messages to systemd waiting for
room, the metrics, and when to look for requests (``dropline retry``,
``dropline reload``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.host import free_space_problem
from ..errors import DiskFullError
from ..log import journal_behind, journal_waiting
from ..metrics import MetricsSink
from ..notify import Notifier
from .context import LoopContext

_STATUS_EVERY = 0.25  # seconds between STATUS updates when busy
_SPACE_CHECK_EVERY = 1.0  # seconds between free-space checks (and retries after ENOSPC)
_REQUESTS_EVERY = 0.5  # seconds between looks for requests from `dropline retry` and `reload`
_JOURNAL_RETRY = 0.02  # seconds between tries while entries wait for journald (journal.py)


class Duties:
    """The loop's timers and what they guard."""

    def __init__(
        self,
        ctx: LoopContext,
        notifier: Notifier,
        metrics: MetricsSink,
        status_line: Callable[[], str],
    ) -> None:
        self.ctx = ctx
        self.notifier = notifier
        self.metrics = metrics
        self.status_line = status_line
        self.disk_problem = ""  # non-empty while claiming is paused for lack of space
        self.journal_paused = False  # claiming paused: entries wait for journald
        self.next_space_check = 0.0
        self.next_status = 0.0
        self.next_ping = 0.0
        self.next_requests = 0.0

    def next_deadline(self) -> float:
        deadlines = [] if self.ctx.stopping else [self.next_requests]
        if self.disk_problem:
            deadlines.append(self.next_space_check)
        if self.notifier.watchdog_interval:
            deadlines.append(self.next_ping)
        if self.journal_paused or journal_waiting():
            deadlines.append(time.monotonic() + _JOURNAL_RETRY)
        notify_due = self.notifier.due()  # a message waiting for room in systemd's queue
        if notify_due is not None:
            deadlines.append(notify_due)
        return min(deadlines, default=float("inf"))

    def may_claim(self) -> bool:
        """Whether claiming may go on now: space on every filesystem, journald keeping up."""
        if self.ctx.stopping:
            return False
        return self._space_ok() and self._journal_ok()

    def paused(self) -> bool:
        return bool(self.disk_problem) or self.journal_paused

    def requests_due(self) -> bool:
        if self.ctx.mono < self.next_requests:
            return False
        self.next_requests = self.ctx.mono + _REQUESTS_EVERY
        return True

    def requests_now(self) -> None:
        """A `dropline retry` is waiting for an answer: look at the next pass."""
        self.next_requests = self.ctx.mono

    # --- free space and journald ------------------------------------------------

    def _space_ok(self) -> bool:
        """Whether claiming may go on: every folder's filesystem above min_free_space."""
        mono = self.ctx.mono
        if mono < self.next_space_check:
            return not self.disk_problem
        self.next_space_check = mono + _SPACE_CHECK_EVERY
        problem = free_space_problem(self.ctx.config)
        if problem and not self.disk_problem:
            self.ctx.log.warning("disk.low", problem=problem, action="claiming paused")
        elif not problem and self.disk_problem:
            self.ctx.log.info("disk.ok", action="claiming resumed")
        self.disk_problem = problem
        return not problem

    def _journal_ok(self) -> bool:
        """Whether claiming may go on: journald takes the entries as fast as they come.

        While many wait for it (journal.py), no new file is claimed: the files in
        flight still end and their ends still fit in the queue, so every file's
        end reaches the journal; the loop, its stages and its watchdog go on.
        """
        behind = journal_behind()
        log = self.ctx.log
        if behind and not self.journal_paused:
            log.warning("journal.behind", pending=journal_waiting(), action="claiming paused")
        elif not behind and self.journal_paused:
            log.info("journal.caught_up", action="claiming resumed")
        self.journal_paused = behind
        return not behind

    def disk_full(self, exc: DiskFullError) -> None:
        """ENOSPC: pause claiming until the next check finds space again."""
        if not self.disk_problem:
            self.ctx.log.warning("disk.full", error=str(exc), action="claiming paused")
        self.disk_problem = str(exc)
        self.next_space_check = self.ctx.mono + _SPACE_CHECK_EVERY

    # --- systemd and the metrics ------------------------------------------------

    def run(self, waiting: int, in_flight: int, running: int) -> None:
        """Once a pass: gauges, STATUS= when due, WATCHDOG=1 when due."""
        mono = self.ctx.mono
        # A few attribute stores, and a comparison until the textfile is due: every pass.
        self.metrics.set_gauges(waiting, in_flight, running)
        self.metrics.tick(mono)
        if mono >= self.next_status:
            self.next_status = mono + _STATUS_EVERY
            self.notifier.status(self.status_line())
        self.feed_watchdog(mono)
        # READY=1, STOPPING=1, ... that found systemd's queue full: never a blocking send.
        self.notifier.retry(mono)

    def feed_watchdog(self, mono: float | None = None) -> None:
        """WATCHDOG=1 if due.  Called once a pass, and by the loop while it reads a
        big file (gigabytes take seconds): the loop is at work, not stuck."""
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        if mono is None:
            mono = time.monotonic()
        if mono >= self.next_ping:
            self.next_ping = mono + interval
            self.notifier.watchdog()
