"""The daemon: one loop that owns the database and drives every file.

``run_once(now)`` is one pass, in this order: apply the signals' flags,
record stage results (the scheduler), record what the mover did with the
batches handed to it (the transit), dispatch stages, send the next finishes
and claims, serve requests, then the side duties.  ``run()`` is a thin loop
around it that waits on the inbox fed by the inotify reader, the worker
threads and the signal handlers, no longer than the parts' next deadline.

Nothing but this loop writes the state of a file in flight (the commands
read the database, leave requests in it, or prune rows of files long
finished).  ``start_daemon`` builds it from started parts, in order, each
closed in the reverse order by one ExitStack.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..crashpoints import crashpoint
from ..lifecycle.claim import Claimed
from ..lifecycle.finish import Finish
from ..log import release_lines
from ..notify import Notifier
from ..reloading import Verdict
from ..scratch import scratch_root
from ..spool import Entry, Spool
from ..state import HoldRows, ItemLog, PauseRows, RequestQueue
from ..watch import FileReady, FolderFound, Overflow, RescanNeeded, WatchLost
from ..workers import StageResult, WorkerPool
from .context import LoopContext
from .duties import Duties
from .gates import Gates
from .intake import Intake
from .reload import read_again
from .requests import admit_moved, serve_moves, serve_reloads
from .scheduler import Scheduler
from .signals import Flags
from .transit import MoverLink, Received, Transit
from .watching import WatchKeeper

_STATUS_ERROR_MAX = 300  # characters of a refused reload's error in STATUS= (the log has it all)
_ABANDON_AFTER = 0.4  # seconds after cancelling the stages at stop_timeout: exit anyway


class Daemon:
    """The coordinator of one pass: it hands results between the parts, which
    import none of each other."""

    def __init__(
        self,
        ctx: LoopContext,
        *,
        items: ItemLog,
        requests: RequestQueue,
        spool: Spool,
        mover: MoverLink,
        pool: WorkerPool,
        watch: WatchKeeper,
        notifier: Notifier,
        flags: Flags,
        started: Config,
        exit_when_idle: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.requests = requests
        self.spool = spool
        self.watch = watch
        self.notifier = notifier
        self.flags = flags
        self.started = started  # what a reload cannot change is what it started with
        self.exit_when_idle = exit_when_idle
        self.clock = clock
        self.reload_refused = ""  # why the last reload was refused, until one succeeds
        self.intake = Intake(ctx, spool)
        spool.settings.judge_claimed = self.intake.holds.database_claimed
        self.duties = Duties(ctx, notifier, ctx.events.metrics, self.status_line)
        self.scheduler = Scheduler(ctx, items, spool, pool, scratch_root(started.state_db))
        self.gates = Gates(PauseRows(items.db), HoldRows(items.db), ctx.log, ctx.events.metrics)
        self.gates.on_paused = pool.withhold  # what a worker has not begun waits too
        # A pause asked of the daemon before this one (stopping then) applies before any
        # stage starts, not a pass later.
        self.gates.serve(requests)
        pool.withhold(frozenset(self.gates.paused))
        self.gates.reconfigured(ctx.routes)  # a hold of a stage no longer there goes
        # A paused or held pipeline starts no stage; the scheduler tells the breaker.
        self.scheduler.ready.closed = self.gates.closed
        self.scheduler.gates = self.gates
        self.transit = Transit(ctx, items, spool, mover, self.duties.disk_full)

    # --- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Loop until stopped (or idle, with exit_when_idle)."""
        inbox = self.flags.inbox
        while True:
            release_lines()  # before waiting: the journal is never behind an idle loop
            timeout = self.wait_time()
            with contextlib.suppress(queue.Empty):
                self.absorb(inbox.get(timeout=timeout) if timeout > 0 else None)
            while True:
                try:
                    self.absorb(inbox.get_nowait())
                except queue.Empty:
                    break
            if self.run_once(time.time()):
                break

    def run_once(self, now: float) -> bool:
        """One pass of the loop; True when the daemon should exit."""
        ctx = self.ctx
        ctx.mono = self.clock()
        ctx.passes += 1
        self._apply_flags()
        self.scheduler.collect(now)
        got = self.transit.receive(now)
        if self.transit.kept and not ctx.stopping:
            self.transit.look_at_kept(now, got)
        self._hand_over(got)
        self.scheduler.dispatch(now)
        may_claim = self.duties.may_claim()
        finishes, self.scheduler.finishes = self.scheduler.finishes, []
        ended = self.transit.send(
            now,
            finishes,
            self._next_entries(now) if may_claim else None,
            self._names_in_working,
        )
        self._ended(ended)
        if not ctx.stopping and self.duties.requests_due():
            self._serve_requests(now)
        if self.watch.check():
            self.intake.rescan("watch")
        if self.intake.housekeeping():
            ctx.events.metrics.rescan()
        self.duties.run(self.intake.waiting, len(self.scheduler.items), len(self.scheduler.running))
        return self._should_exit()

    def absorb(self, message: Any) -> None:
        """A message from the inbox: a name, a stage's result, news of the watch."""
        if message is None:
            return
        if isinstance(message, FileReady):
            self.intake.notified(message.name)
        elif isinstance(message, FolderFound):
            self.intake.folder_found(message.name)
        elif isinstance(message, StageResult):
            self.scheduler.result(message)
        elif isinstance(message, Overflow):
            self.ctx.log.warning("scan.overflow", detail="inotify queue overflowed; rescanning")
            self.ctx.events.metrics.overflow()
            self.intake.rescan("overflow")
        elif isinstance(message, RescanNeeded):
            self.ctx.log.warning("scan.needed", detail=message.reason)
            self.intake.rescan("watch")
        elif isinstance(message, WatchLost) and self.watch.lost(message):
            self.intake.rescan("watch")

    def wait_time(self) -> float:
        """How long the loop may sleep: zero while there is work it can do now."""
        ctx = self.ctx
        if self.scheduler.has_work() or self.transit.has_work():
            return 0.0
        if (
            not ctx.stopping
            and not self.duties.paused()
            and self._room() > 0
            and self.intake.has_work(self._room_of)
        ):
            return 0.0
        deadlines = [self.intake.next_deadline(), self.duties.next_deadline()]
        # A probe waits for a file ready to try it and a worker free to run it (and
        # none starts while stopping).
        free = self.scheduler.attempts.free() > 0 and not ctx.stopping
        probe = self.gates.next_probe(lambda p: free and self.scheduler.ready.waiting(p) > 0)
        for due in (self.scheduler.next_deadline(), self.transit.next_deadline(), probe):
            if due is not None:
                deadlines.append(due)
        if ctx.stopping_since is not None:
            deadlines.append(ctx.stopping_since + ctx.config.stop_timeout)
        return max(0.0, min(min(deadlines) - self.clock(), 1.0))

    # --- handing results between the parts ------------------------------------

    def _next_entries(self, now: float) -> Callable[[], list[Entry]]:
        def take() -> list[Entry]:
            names = self.transit.names_being_claimed()
            return self.intake.take(now, self._room(), self._room_of, names)

        return take

    def _room(self) -> int:
        """How many more files may be taken into working/ in this pass, all
        pipelines together (each has its own bound too: ``_room_of``)."""
        cfg = self.ctx.config
        taken = len(self.scheduler.items) + self.transit.in_claim()
        # Each pipeline holds at most max_in_flight, and so do the names none matches.
        pipelines = self.ctx.routes.pipelines
        most = cfg.max_in_flight * (len(pipelines) + 1)
        if self._room_of(None) <= 0 and all(self._room_of(p.name) <= 0 for p in pipelines):
            return 0  # every pipeline is full: the scan waits, as names would only be parked
        return min(most - taken, cfg.batch_size)

    def _room_of(self, pipeline: str | None) -> int:
        """How many more files of PIPELINE may be taken into working/: a
        pipeline's backlog never takes another's places."""
        if pipeline in self.gates.paused:
            return 0  # paused: its files wait in incoming/ (a held one's are claimed)
        taken = self.scheduler.in_flight.get(pipeline, 0) + self.transit.in_claim_of(pipeline)
        return self.ctx.config.max_in_flight - taken

    def _names_in_working(self) -> set[bytes]:
        """The names taken in working/ (only dropline writes there), or about to be."""
        return self.scheduler.working_names() | self.transit.working_names()

    def _hand_over(self, got: Received) -> None:
        if got.claim is not None:
            self.intake.not_claimed(got.claim)
            for c in got.claim.claimed:
                self._admit(c)
            if self.intake.markers:
                self._consume_markers(got.claim.claimed)
        self._ended(got.finished)
        for refusal in got.given_up:
            self.intake.refuse(refusal)
        for c in got.settled:
            self._admit(c)

    def _admit(self, c: Claimed) -> None:
        self.intake.claimed(c.name)
        self.scheduler.admit(c)
        self.ctx.events.claimed(c)

    def _ended(self, finished: list[Finish]) -> None:
        self.scheduler.ended(finished)
        for f in finished:
            self.ctx.events.finished(f)

    def _serve_requests(self, now: float) -> None:
        """Reloads first, and whatever the room or the disk: they move no file."""
        serve_reloads(self.requests, self._reload)
        self.gates.serve(self.requests)
        room = self._room()
        if room <= 0 or self.duties.disk_problem:
            return
        routes = self.ctx.routes
        moved = serve_moves(
            self.requests,
            self.scheduler.item_log,
            self.spool,
            routes,
            room,
            self._names_in_working(),
            now,
        )
        if moved is not None:
            admit_moved(self.ctx, self.scheduler, *moved)

    def _consume_markers(self, claimed: list[Claimed]) -> None:
        """The done-markers of the files just claimed go with them (``markers.py``).
        After the claim's commit: a crash before this leaves a marker whose file is
        gone, told after a while, and no newer file of that name counts it."""
        markers, removed = self.intake.markers, False
        for c in claimed:
            marker = markers.marker_of(c.name, self.ctx.routes.get(c.pipeline))
            if marker is not None:
                crashpoint("claim.marker")
                removed |= self.spool.incoming.remove_marker(marker, int(c.created_at * 1e9))
        if removed:
            self.spool.sync()

    # --- stop, reload, idle -------------------------------------------------------

    def _apply_flags(self) -> None:
        ctx, flags = self.ctx, self.flags
        if flags.reload:  # SIGHUP
            flags.reload = False
            self._reload()
        if flags.stop and ctx.stopping_since is None:
            ctx.stopping_since = ctx.mono
            self.scheduler.attempts.stopping()
            self.notifier.stopping()
            ctx.log.info("daemon.stopping", in_flight=len(self.scheduler.running))

    def _reload(self) -> Verdict:
        """Read the file again: apply it whole, or refuse it whole and keep the old one."""
        self.notifier.reloading()
        self.ctx.log.info("daemon.reloading", config=str(self.ctx.config.path))
        got = read_again(self.ctx, self.started)
        if got.config is None or got.routes is None:
            self.reload_refused = got.verdict.error
        else:
            self.ctx.config, self.ctx.routes = got.config, got.routes
            # The spool's settings are read at each claim and finish: they apply now.
            self.spool.settings.max_file_size = got.config.max_file_size
            self.spool.settings.layout = got.config.archive_layout
            self.intake.reloaded()
            self.gates.reconfigured(got.routes)
            self.reload_refused = ""
        self.notifier.ready(self.status_line())
        return got.verdict

    def idle(self) -> bool:
        """Nothing to do now but what paused pipelines keep waiting, or held ones whose
        probes have backed off all the way (a downstream down for a while: a batch
        run ends, their files wait in working/; a blip it waits through)."""
        closed, scheduler = self.gates.waiting(), self.scheduler
        waiting = all(
            item.pipeline in closed and item_id not in scheduler.running
            for item_id, item in scheduler.items.items()
        ) and not (closed and scheduler.ready.ends)
        return waiting and self.intake.idle(closed) and self.transit.idle()

    def _should_exit(self) -> bool:
        ctx = self.ctx
        if ctx.stopping_since is not None:
            if not (self.scheduler.running or self.transit.moving()):
                return True
            if ctx.mono >= ctx.stopping_since + ctx.config.stop_timeout:
                # Out of patience: stop the stages still running; idempotent ones run again
                # after the restart, non-idempotent ones fail as indeterminate.
                self.scheduler.attempts.cancel_all()
                if ctx.mono >= ctx.stopping_since + ctx.config.stop_timeout + _ABANDON_AFTER:
                    ctx.log.warning("daemon.abandoned", stages=len(self.scheduler.running))
                    return True
            return False
        if not (self.exit_when_idle and self.idle()):
            return False
        # Idle, but a `dropline retry` may be waiting for an answer: serve it first.
        if self.requests.open_requests(1):
            self.duties.requests_now()
            return False
        return True

    def status_line(self) -> str:
        refused = ""
        if self.reload_refused:
            error = self.reload_refused
            if len(error) > _STATUS_ERROR_MAX:
                error = error[: _STATUS_ERROR_MAX - 3] + "..."
            refused = f"reload refused: {error}; running the previous configuration; "
        disk = self.duties.disk_problem
        paused = refused + (f"PAUSED, {disk}; " if disk else "") + self.gates.status()
        if self.duties.journal_paused:
            paused += "PAUSED, journald is not reading; "
        scanning = ", scanning" if self.intake.scan is not None else ""
        counts = self.ctx.events.counts
        return (
            f"{paused}in flight {len(self.scheduler.items)}, "
            f"running {self.scheduler.attempts.begun()}, "
            f"waiting {self.intake.waiting}{scanning}, archived {counts['archived']}, "
            f"failed {counts['failed']}"
        )
