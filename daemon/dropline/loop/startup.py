"""Starting and stopping the daemon: its parts started in a declared order
(locks, spool, mover, database, recovery, workers, watch, metrics, READY),
each closed in the reverse order by one ExitStack, whatever happens."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..config import Config
from ..datalock import acquire_data_lock
from ..errors import DroplineError
from ..events import FileEvents
from ..lease import LeaseProbe, catch_lease_breaks, keep_capabilities_to_ourselves
from ..lifecycle.recovery import describe as describe_recovery
from ..lifecycle.recovery import recover
from ..log import get_logger, hold_lines, log_thread_failures, release_lines
from ..metrics import make_metrics
from ..notify import Notifier
from ..pipeline import Routes
from ..scratch import sweep
from ..spool import Spool
from ..spool.mover import Mover
from ..state import Database, ItemLog, RequestQueue, acquire_lock
from ..workers import WorkerPool
from .context import LoopContext
from .daemon import Daemon
from .signals import Flags
from .transit import MoverLink
from .watching import WatchKeeper

# READY waits this long at most for the worker processes to have started: the
# contract promises READY within a second of start, and the rest of the start
# takes a few tenths of one.
READY_WAITS_FOR_CHILDREN = 0.5


def _leases_refused(log: Any) -> Callable[[str], None]:
    def refused(why: str) -> None:
        log.warning(
            "lease.unavailable",
            reason=why,
            detail="cannot tell whether a writer holds a file open; "
            "close events and settle_time decide alone",
        )

    return refused


@contextlib.contextmanager
def start_daemon(
    config: Config,
    *,
    notifier: Notifier | None = None,
    flags: Flags | None = None,
    exit_when_idle: bool = False,
    now: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    mover: Callable[[Spool, tuple[int, ...]], MoverLink] = Mover,
) -> Iterator[Daemon]:
    """Lock, start the mover, recover, start the workers and the watch, start the
    scan, then READY (before the backlog drains); everything closed in reverse order."""
    now = time.time() if now is None else now
    notifier = notifier or Notifier()
    flags = flags or Flags()
    log = get_logger()
    metrics = make_metrics(config.metrics, file=str(config.path))  # a no-op unless configured
    ctx = LoopContext(config, Routes(config), log, FileEvents(log, metrics), mono=clock())
    with contextlib.ExitStack() as stack:
        # Last: STOPPING=1 still waiting for room gets a short, bounded try.
        stack.callback(notifier.close)
        # A command holding the lock while no daemon runs (`dropline retry`) is brief.
        lock_fd = acquire_lock(config.state_db, wait=3.0)
        stack.callback(os.close, lock_fd)
        # Then the data folder's, before recovery looks at working/: a daemon of
        # another state on this folder holds files there that are not ours to adopt.
        data_lock_fd = acquire_data_lock(config.data_dir, lock_fd, wait=3.0)
        stack.callback(os.close, data_lock_fd)
        spool = Spool(
            config.data_dir, max_file_size=config.max_file_size, layout=config.archive_layout
        )
        stack.callback(spool.close)
        # Before the first lease: a lease break (SIGIO) must never end the daemon.
        catch_lease_breaks()
        spool.settings.leases = LeaseProbe(_leases_refused(log))
        keep_capabilities_to_ourselves()  # before the mover and the workers start
        # The mover as soon as the folders are open: its interpreter starts on the
        # other core while this one opens the database and recovers, so it is ready
        # by the first claim (started after recovery, the first claim waited for it:
        # about 0.1 s of every start).  It moves nothing until asked, and it holds
        # the locks too: no new daemon recovers while it still moves files.
        the_mover = mover(spool, (lock_fd, data_lock_fd))
        stack.callback(the_mover.close)
        db = Database(config.state_db)
        stack.callback(db.close)
        items = ItemLog(db)
        report = recover(items, spool, ctx.routes, now, log)
        if report.changed:
            log.info("recovery.done", **describe_recovery(report))
        for f in report.finished:
            if f.state:  # the others are still "finishing": loaded below, tried again
                ctx.events.finished(f)
        counts = items.counts()
        ctx.events.counts.update(archived=counts.get("archived", 0), failed=counts.get("failed", 0))
        # Children started with the pool when a stage will run in them: no
        # file then waits for an interpreter's start.
        warm = any(s.runs_in == "process" for p in ctx.routes.pipelines for s in p.stages_all)
        pool = WorkerPool(config.workers, flags.inbox, config.log_format, warm=warm)
        stack.callback(pool.close)
        # The watch first, then the scan: a file arriving in between is seen by both.
        watch = WatchKeeper(ctx, flags.inbox)
        stack.callback(watch.close)
        metrics.start()
        stack.callback(metrics.close)
        daemon = Daemon(
            ctx,
            items=items,
            requests=RequestQueue(db),
            spool=spool,
            mover=the_mover,
            pool=pool,
            watch=watch,
            notifier=notifier,
            flags=flags,
            started=config,
            exit_when_idle=exit_when_idle,
            clock=clock,
        )
        daemon.scheduler.resume(items.unfinished_items(), now)
        sweep(daemon.scheduler.attempts.scratch_root, set(daemon.scheduler.items))
        # Entries recovery would not adopt (not regular files) stay in working/:
        # their names are taken for as long as this daemon runs.
        known = daemon.scheduler.working_names()
        daemon.transit.stranded = set(spool.working.names()) - known
        spool.settings.reading_tick = (
            daemon.duties.feed_watchdog
        )  # from here on the loop keeps it fed
        daemon.intake.start_scan()
        # Started with the rest: READY once they can take files, but never later
        # than the contract's second from start allows for (a loaded host).
        pool.wait_warm(READY_WAITS_FOR_CHILDREN)
        notifier.ready(daemon.status_line())
        log.info(
            "daemon.ready",
            pid=os.getpid(),
            data_dir=str(config.data_dir),
            pipelines=[p.name for p in ctx.routes.pipelines],
            resumed=len(daemon.scheduler.items),
        )
        yield daemon


def run_daemon(
    config: Config,
    *,
    notifier: Notifier | None = None,
    flags: Flags | None = None,
    exit_when_idle: bool = False,
) -> None:
    """Start, loop until stopped (or idle, with exit_when_idle), stop."""
    log = get_logger()
    log_thread_failures()  # a thread's traceback as one event, never amid other lines
    hold_lines()  # the loop's lines are written once per pass (log.LineWriter)
    try:
        with contextlib.ExitStack() as stack:
            try:
                daemon = stack.enter_context(
                    start_daemon(
                        config, notifier=notifier, flags=flags, exit_when_idle=exit_when_idle
                    )
                )
                daemon.run()
            except DroplineError as exc:
                log.critical("daemon.failed", error=str(exc))  # before the parts close
                raise
        counts = daemon.ctx.events.counts
        log.info("daemon.stopped", archived=counts["archived"], failed=counts["failed"])
    finally:
        release_lines()
