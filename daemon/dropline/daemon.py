"""The daemon: one loop that owns the database and drives every file.

``run_once(now)`` is one pass: apply stage results, record what the mover
process did with the batches handed to it (``mover.py``: the renames and
fsyncs; the loop reads and hashes what was claimed), dispatch stages,
record the next finishes and claims and hand them to the mover, apply the
requests ``dropline retry`` left in the database.  ``run()`` is a thin
loop around it that waits on the queue fed by the inotify reader, the
worker threads and the signal handlers.
Signal handlers only set flags; nothing but this loop writes the state of a
file in flight (the commands read the database, leave requests in it, or
prune rows of files long finished).

A file that fails runs its pipeline's ``on_failure`` stages first, if any:
its failure is kept in its metadata (FAILURE), and its next stage index
goes on past the ordinary stages (``Pipeline.stage_at``).

Two clocks: ``now`` (wall time) for what is recorded and survives a restart,
``self.mono`` (monotonic) for every timer of the loop, so a step of the wall
clock never stalls the watchdog, STATUS, settle times or retries.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .config import Config, check_paths, load_config
from .config.host import free_space_problem
from .crashpoints import crashpoint, pausepoint
from .datalock import acquire_data_lock
from .errors import ConfigError, DiskFullError, DroplineError, FatalIOError
from .folders import DroppedFolders
from .holding import GONE, Waiting, look
from .lease import LeaseProbe, catch_lease_breaks, keep_capabilities_to_ourselves
from .log import get_logger, hold_lines, journal_behind, journal_waiting, release_lines
from .metrics import make_metrics
from .notify import Notifier
from .pipeline import Pipeline, Routes
from .protocol import (
    ClaimBatch,
    Claimed,
    ClaimResult,
    Finish,
    FinishBatch,
    judge_claim,
    move_here,
    plan_claim,
    plan_finish,
    record_active,
    record_claim_intent,
    record_claimed,
    record_finish_intent,
    record_finished,
    take_answers,
    write_reasons,
)
from .recovery import describe as describe_recovery
from .recovery import finish_for, recover
from .reloading import KIND as RELOAD
from .reloading import Verdict, restart_needed
from .requeue import requeue_batch
from .retry import compute_backoff
from .scratch import remove as remove_scratch
from .scratch import scratch_root, sweep
from .spool import Entry, Refusal, Spool, open_folder, split_name
from .spool.mover import Mover
from .stages import FAILURE, StageContext
from .state import Database, ItemLog, RequestQueue, acquire_lock
from .toolnames import DATABASE_MAGIC, Beside, Hold
from .watch import FileReady, FolderFound, IncomingWatch, Overflow, RescanNeeded, WatchLost
from .workers import StageJob, StageResult, WorkerPool

_MAX_REFUSED = 100_000  # refusals remembered, so each is logged once
_MAX_BUSY = 10_000  # names put back remembered, so each is logged once until claimed
_WATCH_CHECK_EVERY = 1.0  # seconds between looks at the inotify reader thread
# A watch that keeps failing is not replaced for ever: the daemon exits, systemd restarts it.
_WATCH_FAILURES_ALLOWED = 5
_WATCH_FAILURE_WINDOW = 60.0
_MAX_SETTLING = 10_000  # names from a scan waiting to settle; beyond, rescan later
# Seconds between looks at a name held while a file beside it is there (toolnames.py).
_HOLD_RECHECK = 1.0
_HELD_LOG_EVERY = 60.0  # seconds: a name held again within this is not logged again
_STATUS_EVERY = 0.25  # seconds between STATUS updates when busy
_PY_TIMEOUT_GRACE = 1.0  # a Python stage past its timeout by this much is abandoned
_SPACE_CHECK_EVERY = 1.0  # seconds between free-space checks (and retries after ENOSPC)
# Claim batches with the mover at once: while it moves one, the loop records
# the one before and the mover has the next one queued (see run_once).
_CLAIMS_AHEAD = 2
# Bytes per claim batch, at most (with the file that crosses the line): the loop
# reads and hashes a whole batch in one pass (64 MiB: some 40 ms from the page
# cache), so a backlog of big files does not hold up the pass and its answers.
_CLAIM_BYTES = 64 << 20
_REQUESTS_EVERY = 0.5  # seconds between looks for requests from `dropline retry` and `reload`
_RELOADS_AT_ONCE = 64  # reload requests answered by one reading of the file
_STATUS_ERROR_MAX = 300  # characters of a refused reload's error in STATUS= (the log has it all)
_JOURNAL_RETRY = 0.02  # seconds between tries while entries wait for journald (journal.py)
# Seconds at least between two looks at a file held open for writing (its close
# event brings it back at once; this is for a close that inotify did not tell).
_OPEN_RECHECK = 0.5


@dataclass
class Item:
    """A file in working/, as the loop tracks it."""

    id: str
    name: bytes
    working_name: bytes
    pipeline: str | None
    next_stage: int = 0
    attempt: int = 0  # failed attempts of next_stage
    next_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    created_at: float = 0.0
    # (size, ctime) as claimed or as the last stage left it: a change in between
    # means someone still writes to it.
    fingerprint: tuple[int, int] | None = None
    fingerprint_pass: int = -1  # the loop's pass that took it (see _changed_under_us)


@dataclass(slots=True)
class Held:
    """A name in incoming/ that a rule of toolnames.py keeps waiting."""

    rule: str
    since: float  # monotonic: when it was first held
    # On a file beside it (not a grace): it waits for that, and does not keep
    # --exit-when-idle from exiting.
    waits: bool
    warned: bool = False  # logged as held too long


@dataclass
class Running:
    """A stage attempt handed to a worker."""

    token: int
    attempt_id: int
    stage_index: int
    stage: str
    kind: str
    started: float
    deadline: float
    cancel: threading.Event


class Daemon:
    """The drop-folder supervisor for one configuration."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        self.config = config
        # What a reload cannot change (workers, log set-up, metrics) is what it started with.
        self.started_config = config
        self.routes = Routes(config)
        self.notifier = notifier or Notifier()
        self.exit_when_idle = exit_when_idle
        self.log = get_logger()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.items: dict[str, Item] = {}
        self.ready: collections.deque[str] = collections.deque()
        self.retry_heap: list[tuple[float, str]] = []
        self.running: dict[str, Running] = {}
        self.to_finish: list[Finish] = []
        self.results_pending: list[tuple[StageResult, Item, Running]] = []
        self.candidates: dict[bytes, None] = {}
        self.settling: dict[bytes, float] = {}
        self.held: dict[bytes, Held] = {}  # names kept waiting by a rule, each in settling too
        # Databases the claim found with a journal beside them (toolnames.py): asked
        # about before their claim from then on.
        self.databases: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.held_logged: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self.beside: Beside | None = None
        self.refused: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        # Files found held open for writing, each logged once per episode: names in
        # incoming/ (with their (dev, ino)) and items in working/.
        self.held_open: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        self.held_items: set[str] = set()
        # Folders dropped into incoming/: their files are looked for every second.
        self.folders = DroppedFolders(lambda name: self.routes.is_ignored(name))
        self.scan: Any = None
        self.scan_seen = 0
        self.rescan_pending = ""  # why a rescan is due before its interval: "" when none is
        self.next_rescan = 0.0
        self.counts = {"archived": 0, "failed": 0}
        self._token = 0
        self.passes = 0  # passes of the loop so far
        self._stop_requested = False
        self._reload_requested = False
        # Why the last reload was refused, until one succeeds: shown in STATUS=.
        self.reload_refused = ""
        self.stopping_since: float | None = None
        self._next_status = 0.0
        self._next_ping = 0.0
        self._lock_fd = -1
        self._data_lock_fd = -1
        self.stranded: set[bytes] = set()
        # Files that could not be put back, kept in working/ until they settle (holding.py).
        self.kept: dict[str, Waiting] = {}
        # Names put back since their last claim: logged once, not at every put-back.
        self.busy: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.disk_problem = ""  # non-empty while claiming is paused for lack of space
        self.journal_paused = False  # claiming paused: entries wait for journald
        self._next_space_check = 0.0
        self._finish_retry_at = 0.0  # after ENOSPC while finishing
        self._next_requests = 0.0
        self.mono = time.monotonic()
        self.db: Database | None = None
        self.item_log: ItemLog | None = None
        self.requests: RequestQueue | None = None
        self.spool: Spool | None = None
        self.watch: IncomingWatch | None = None
        self._incoming_id: tuple[int, int] | None = None  # (st_dev, st_ino) of incoming/
        self._next_watch_check = 0.0
        self._watch_failures: collections.deque[float] = collections.deque()
        self.pool: WorkerPool | None = None
        self.mover: Mover | None = None
        # Batches handed to the mover, oldest first (its answers come in order).
        self.claiming: collections.deque[ClaimBatch] = collections.deque()
        self.finishing: collections.deque[FinishBatch] = collections.deque()
        # Claimed this pass with no stage to run: recorded with their finish intent.
        self.unrecorded: dict[str, Claimed] = {}
        self.scratch_root = scratch_root(config.state_db)
        self.ran_stages: set[str] = set()  # items that may have a scratch folder
        # Off (a no-op) unless configured; not changed by a reload.
        self.metrics = make_metrics(config.metrics, file=str(config.path))

    # --- start and stop ---------------------------------------------------

    def start(self, now: float) -> None:
        """Lock, recover, watch, start the scan, then READY (before the backlog drains)."""
        cfg = self.config
        self.mono = time.monotonic()
        # A command holding the lock while no daemon runs (`dropline retry`) is brief.
        self._lock_fd = acquire_lock(cfg.state_db, wait=3.0)
        # Then the data folder's, before recovery looks at working/: a daemon of
        # another state on this folder holds files there that are not ours to adopt.
        self._data_lock_fd = acquire_data_lock(cfg.data_dir, self._lock_fd, wait=3.0)
        self.db = Database(cfg.state_db)
        self.item_log = ItemLog(self.db)
        self.requests = RequestQueue(self.db)
        self.spool = Spool(cfg.data_dir, max_file_size=cfg.max_file_size, layout=cfg.archive_layout)
        self.beside = Beside(self.spool.dirs.incoming)
        # Before the first lease: a lease break (SIGIO) must never end the daemon.
        catch_lease_breaks()
        self.spool.settings.leases = LeaseProbe(self._leases_refused)
        self.spool.settings.judge_claimed = self._database_claimed
        keep_capabilities_to_ourselves()  # before the mover and the workers start
        report = recover(self.item_log, self.spool, self.routes, now, self.log)
        self.spool.settings.reading_tick = self._feed_watchdog  # from here on the loop keeps it fed
        if report.changed:
            self.log.info("recovery.done", **describe_recovery(report))
        for f in report.finished:
            if f.state:  # the others are still "finishing": loaded below, tried again
                self._log_finish(f)
        counts = self.item_log.counts()
        self.counts = {"archived": counts.get("archived", 0), "failed": counts.get("failed", 0)}
        for row in self.item_log.unfinished_items():
            item = Item(
                row.id,
                row.name,
                row.working_name,
                row.pipeline,
                row.next_stage,
                row.attempt,
                row.next_attempt_at,
                row.metadata,
                row.sha256,
                row.created_at,
                (row.size, row.ctime_ns) if row.size is not None and row.ctime_ns else None,
            )
            self.items[item.id] = item
            if row.state == "finishing":
                self.to_finish.append(
                    finish_for(row, row.outcome or "failed", row.reason or "", None)
                )
            else:
                self._schedule(item, now)
        sweep(self.scratch_root, set(self.items))
        self.ran_stages = set(self.items)
        # Entries recovery would not adopt (not regular files) stay in working/:
        # their names are taken for as long as this daemon runs.
        known = {item.working_name for item in self.items.values()}
        self.stranded = set(self.spool.working.names()) - known
        # It holds the locks too: no new daemon recovers while it still moves files.
        self.mover = Mover(self.spool, keep_fds=(self._lock_fd, self._data_lock_fd))
        self.pool = WorkerPool(cfg.workers, self.inbox, cfg.log_format)
        # The watch first, then the scan: a file arriving in between is seen by both.
        st = os.stat(cfg.incoming)
        self._incoming_id = (st.st_dev, st.st_ino)
        self.watch = IncomingWatch(cfg.incoming, self.inbox)
        self.metrics.start()
        self._start_scan()
        self.notifier.ready(self.status_line())
        self.log.info(
            "daemon.ready",
            pid=os.getpid(),
            data_dir=str(cfg.data_dir),
            pipelines=[p.name for p in self.routes.pipelines],
            resumed=len(self.items),
        )

    def close(self) -> None:
        self.metrics.close()
        if self.watch is not None:
            self.watch.close()
        if self.pool is not None:
            self.pool.close()
        if self.mover is not None:
            # Batches not answered yet stay recorded as intents: recovery completes them.
            self.mover.close()
            self.mover = None
        if self.spool is not None:
            self.spool.close()
        if self.db is not None:
            self.db.close()
        for fd in (self._data_lock_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._data_lock_fd = self._lock_fd = -1
        # Last: STOPPING=1 still waiting for room gets a short, bounded try.
        self.notifier.close()

    def request_stop(self) -> None:
        self._stop_requested = True
        self.inbox.put(None)  # SimpleQueue.put is reentrant: safe in a signal handler

    def request_reload(self) -> None:
        self._reload_requested = True
        self.inbox.put(None)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # --- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Start, then loop until stopped (or idle, with exit_when_idle)."""
        hold_lines()  # the loop's lines are written once per pass (log.LineWriter)
        try:
            try:
                self.start(time.time())
                while True:
                    release_lines()  # before waiting: the journal is never behind an idle loop
                    timeout = self._wait_time()
                    with contextlib.suppress(queue.Empty):
                        self._absorb(self.inbox.get(timeout=timeout) if timeout > 0 else None)
                    while True:
                        try:
                            self._absorb(self.inbox.get_nowait())
                        except queue.Empty:
                            break
                    if self.run_once(time.time()):
                        break
            except DroplineError as exc:
                self.log.critical("daemon.failed", error=str(exc))
                raise
            finally:
                self.close()
            self.log.info(
                "daemon.stopped", archived=self.counts["archived"], failed=self.counts["failed"]
            )
        finally:
            release_lines()

    def _wait_time(self) -> float:
        """How long the loop may sleep: zero while there is work it can do now."""
        stopping = self.stopping_since is not None
        assert self.pool is not None
        finish_blocked = self.mono < self._finish_retry_at
        if (self.to_finish and not finish_blocked) or self.results_pending:
            return 0.0
        if self.claiming or self.finishing:
            return 0.0  # their answers are read in the next pass
        if not stopping and self.ready and len(self.running) < self.pool.size:
            return 0.0
        claiming = (
            not stopping
            and not self.disk_problem
            and not self.journal_paused
            and self._has_capacity()
        )
        if claiming and (self.candidates or self.scan is not None):
            return 0.0
        deadlines = [self.next_rescan]
        folders_due = self.folders.due()
        if folders_due is not None:
            deadlines.append(folders_due)
        if not stopping:
            deadlines.append(self._next_requests)
        if self.disk_problem:
            deadlines.append(self._next_space_check)
        if self.to_finish:
            deadlines.append(self._finish_retry_at)
        if self.retry_heap:
            deadlines.append(self.retry_heap[0][0])
        if self.settling:
            deadlines.append(min(self.settling.values()))
        if self.kept and not stopping:
            deadlines.append(min(w.due for w in self.kept.values()))
        if self.running:
            deadlines.append(min(r.deadline for r in self.running.values()) + _PY_TIMEOUT_GRACE)
        if self.notifier.watchdog_interval:
            deadlines.append(self._next_ping)
        if self.journal_paused or journal_waiting():
            deadlines.append(time.monotonic() + _JOURNAL_RETRY)
        notify_due = self.notifier.due()  # a message waiting for room in systemd's queue
        if notify_due is not None:
            deadlines.append(notify_due)
        if self.stopping_since is not None:
            deadlines.append(self.stopping_since + self.config.stop_timeout)
        return max(0.0, min(min(deadlines) - time.monotonic(), 1.0))

    def _absorb(self, message: Any) -> None:
        if message is None:
            return
        if isinstance(message, FileReady):
            self.candidates[message.name] = None
        elif isinstance(message, FolderFound):
            self._folder_found(message.name)
        elif isinstance(message, StageResult):
            self._apply_result(message)
        elif isinstance(message, Overflow):
            self.log.warning("scan.overflow", detail="inotify queue overflowed; rescanning")
            self.metrics.overflow()
            self.rescan_pending = "overflow"
        elif isinstance(message, RescanNeeded):
            self.log.warning("scan.needed", detail=message.reason)
            self.rescan_pending = "watch"
        elif (
            isinstance(message, WatchLost)
            and self.watch is not None
            and message.generation == self.watch.generation  # not a watch already replaced
        ):
            self._watch_ended(message.reason)

    def run_once(self, now: float) -> bool:
        """One pass of the loop; True when the daemon should exit."""
        self.mono = time.monotonic()
        self.passes += 1
        if self._reload_requested:  # SIGHUP
            self._reload_requested = False
            self._reload()
        if self._stop_requested and self.stopping_since is None:
            self.stopping_since = self.mono
            self.notifier.stopping()
            self.log.info("daemon.stopping", in_flight=len(self.running))
        if self.results_pending:
            self._commit_results(now)
        self._expire_python_stages(now)
        while self.retry_heap and self.retry_heap[0][0] <= self.mono:
            _, item_id = heapq.heappop(self.retry_heap)
            if item_id in self.items:
                self.ready.append(item_id)
        # The mover answers in order.  Each pass records what it did with the
        # oldest claim batch and the finishes sent last pass, while it already
        # moves the next claim batch; then the pass sends the next finishes and
        # claims, their intents in one commit.  So the mover is never idle while
        # the loop records, and the loop makes two commits per pass.
        self._record_answers(now)
        if self.kept and self.stopping_since is None:
            self._look_at_kept(now)
        self._dispatch(now)
        self._send_next(now)
        if self.stopping_since is None:
            self._serve_requests(now)
        self._housekeeping()
        return self._should_exit()

    # --- stage results ------------------------------------------------------

    def _apply_result(self, result: StageResult) -> None:
        running = self.running.get(result.item_id)
        if running is None or running.token != result.token:
            return  # a stage abandoned after its timeout finally returned
        del self.running[result.item_id]
        self.results_pending.append((result, self.items[result.item_id], running))

    def _commit_results(self, now: float) -> None:
        pending, self.results_pending = self.results_pending, []
        assert self.db is not None
        with self.db.transaction():
            logs = [
                self._record_result(result, item, running, now) for result, item, running in pending
            ]
        crashpoint("stage.result_committed")
        # Logged once committed: the journal never reports a step the database lacks.
        for item, running, level, event, fields in logs:
            log = self.log.bind(
                item=item.id, file=item.name, pipeline=item.pipeline, stage=running.stage
            )
            getattr(log, level)(event, **fields)

    def _record_result(
        self, result: StageResult, item: Item, running: Running, now: float
    ) -> tuple[Item, Running, str, str, dict[str, Any]]:
        """Record how an attempt ended and decide what comes next; returns the log event."""
        assert self.item_log is not None
        pipeline = self.routes.get(item.pipeline)
        stage = pipeline.stage_at(running.stage_index) if pipeline else None
        stage_cfg = stage.config if stage else None
        stopped = self.stopping_since is not None and running.cancel.is_set()
        self.metrics.stage_ended(
            item.pipeline or "none",
            running.stage,
            "interrupted" if stopped and result.outcome != "succeeded" else result.outcome,
            result.duration or self.mono - running.started,  # 0 when abandoned
        )
        if result.outcome == "succeeded":
            self.item_log.record_stage_end(running.attempt_id, "succeeded", "", now)
            item.next_stage = running.stage_index + 1
            item.attempt = 0
            item.next_at = None
            item.metadata.update(result.metadata)
            self.item_log.set_progress(item.id, item.next_stage, 0, None, item.metadata, now)
            assert self.spool is not None
            seen = self.spool.working.fingerprint(item.working_name)
            if stage_cfg and stage_cfg.modifies and seen is not None and seen != item.fingerprint:
                item.fingerprint = seen  # the stage rewrote it, as it declares it may
                self.item_log.set_fingerprint(item.id, seen[0], seen[1], now)
            self.ready.append(item.id)
            return item, running, "info", "stage.succeeded", {"seconds": round(result.duration, 3)}
        if self.stopping_since is not None and running.cancel.is_set():
            if stage_cfg is not None and not stage_cfg.idempotent:
                # Stopped half-way, a non-idempotent stage may have done part of its work.
                reason = (
                    f'indeterminate: stage "{running.stage}" is not idempotent and was '
                    "interrupted (crash or stop); it is not run again"
                )
                self.item_log.record_stage_end(running.attempt_id, "indeterminate", reason, now)
                item.attempt += 1
                self._fail(item, reason, running.stage, now, stopping=True)
                return item, running, "error", "stage.failed", {"error": reason}
            # We stopped it: not the stage's failure; it runs again after the restart.
            self.item_log.record_stage_end(running.attempt_id, "interrupted", result.error, now)
            return item, running, "info", "stage.interrupted", {"error": result.error}
        failures = item.attempt + 1
        retries = stage_cfg.retries if stage_cfg else 0
        if result.outcome in ("failed", "timeout") and failures <= retries and stage_cfg:
            delay = compute_backoff(failures, stage_cfg.backoff_initial, stage_cfg.backoff_max)
            item.attempt = failures
            item.next_at = now + delay
            self.item_log.record_stage_end(running.attempt_id, "retrying", result.error, now)
            self.item_log.set_progress(
                item.id, item.next_stage, failures, item.next_at, item.metadata, now
            )
            heapq.heappush(self.retry_heap, (self.mono + delay, item.id))
            self.metrics.retry_scheduled(item.pipeline or "none", running.stage)
            fields = {
                "attempt": failures,
                "of": retries + 1,
                "delay": round(delay, 3),
                "error": result.error,
            }
            return item, running, "warning", "stage.retrying", fields
        item.attempt = failures
        self.item_log.record_stage_end(running.attempt_id, "failed", result.error, now)
        kind = (
            "permanent error"
            if result.outcome == "permanent"
            else f"failed after {failures} attempt(s)"
        )
        if FAILURE in item.metadata:
            # An on_failure stage failed: recorded and logged; the file's outcome
            # (failed, for its own reason) stands, and the next one runs.
            item.next_stage = running.stage_index + 1
            item.attempt = 0
            item.next_at = None
            self.item_log.set_progress(item.id, item.next_stage, 0, None, item.metadata, now)
            self.ready.append(item.id)
        else:
            reason = f"{running.stage}: {kind}: {result.error}"
            self._fail(item, reason, running.stage, now)
        fields = {"attempt": failures, "error": result.error, "kind": kind}
        return item, running, "error", "stage.failed", fields

    def _expire_python_stages(self, now: float) -> None:
        """A Python stage cannot be killed: past its timeout it is abandoned and retried."""
        assert self.pool is not None
        for item_id, running in list(self.running.items()):
            if running.kind == "thread" and self.mono > running.deadline + _PY_TIMEOUT_GRACE:
                running.cancel.set()
                self.pool.abandon_one()
                error = f"timed out after {running.deadline - running.started:.1f} s (abandoned)"
                self._apply_result(StageResult(item_id, running.token, "timeout", error))
        if self.results_pending:
            self._commit_results(now)

    # --- claiming -----------------------------------------------------------

    def _has_capacity(self) -> bool:
        return len(self.items) < self.config.max_in_flight

    def _start_scan(self) -> None:
        assert self.spool is not None
        self.scan = self.spool.incoming.scan()
        self.scan_seen = 0
        self.rescan_pending = ""
        self.next_rescan = self.mono + self.config.rescan_interval

    def _next_names(self, now: float, limit: int) -> list[tuple[bytes, bool]]:
        """Up to LIMIT names to look at: events first, then settled ones, then the scan."""
        names: list[tuple[bytes, bool]] = []
        while self.candidates and len(names) < limit:
            name = next(iter(self.candidates))
            del self.candidates[name]
            self.settling.pop(name, None)
            names.append((name, True))
        if self.settling and len(names) < limit:
            for name, due in list(self.settling.items()):
                if due <= self.mono:
                    del self.settling[name]
                    names.append((name, False))
                    if len(names) >= limit:
                        break
        if self.scan is not None:
            budget = limit * 4  # entries skipped (ignored, refused) also cost time
            while len(names) < limit and budget > 0:
                scanned: bytes | None = next(self.scan, None)
                if scanned is None:
                    self.log.info("scan.completed", entries=self.scan_seen)
                    self.scan = None
                    break
                budget -= 1
                self.scan_seen += 1
                names.append((scanned, False))
        return names

    def _record_answers(self, now: float) -> None:
        """Read the mover's answers for the oldest claim batch and the finishes in
        flight, and record them all in one transaction."""
        assert (
            self.spool is not None
            and self.db is not None
            and self.item_log is not None
            and self.mover is not None
        )
        claim = self.claiming.popleft() if self.claiming else None
        # While claims keep it busy, the finishes sent last pass wait a pass more:
        # the mover does them after the claim read here, and the loop is not
        # held up waiting for them.
        keep = 1 if self.claiming else 0
        finishes = [self.finishing.popleft() for _ in range(len(self.finishing) - keep)]
        result = None
        if claim is not None:
            assert claim.ticket is not None
            answers = self.mover.answer(claim.ticket)
            result = judge_claim(self.spool, self.routes, claim, answers)
        for batch in finishes:
            assert batch.ticket is not None
            take_answers(self.item_log, self.spool, batch, self.mover.answer(batch.ticket))
        if finishes:
            crashpoint("finish.synced")
        if claim is None and not finishes:
            return
        if result is not None:
            self.unrecorded = {c.item_id: c for c in result.claimed if self._goes_straight_on(c)}
        with self.db.transaction():
            if claim is not None and result is not None:
                record_claimed(self.item_log, claim, result, later=self.unrecorded)
            for batch in finishes:
                record_finished(self.item_log, batch)
        if result is not None:
            crashpoint("claim.committed")
            self._claimed(result, now)
        if finishes:
            crashpoint("finish.committed")
        for batch in finishes:
            self._ended(batch)

    def _send_next(self, now: float) -> None:
        """Plan the next finishes and claims, commit their intents at once, hand
        their moves to the mover (finishes first: their answers are read first)."""
        assert (
            self.spool is not None
            and self.db is not None
            and self.item_log is not None
            and self.mover is not None
        )
        finish = None
        if self.to_finish and self.mono >= self._finish_retry_at:
            finish = plan_finish(self.spool, self.to_finish, now)
            self.to_finish = []
        claims: list[ClaimBatch] = []
        if self.stopping_since is None and self._space_ok() and self._journal_ok():
            while len(self.claiming) < _CLAIMS_AHEAD:
                entries = self._next_entries(now)
                if not entries:
                    break
                claim = plan_claim(self.spool, entries, now, self._names_in_working())
                self.claiming.append(claim)  # its names are taken from now on
                claims.append(claim)
        if (finish is not None and finish.fresh) or claims or self.unrecorded:
            with self.db.transaction():
                if finish is not None:
                    record_finish_intent(self.item_log, finish, self.unrecorded)
                # Not finishing after all (finishing is paused after ENOSPC): active.
                record_active(self.item_log, list(self.unrecorded.values()), now)
                self.unrecorded = {}
                for claim in claims:
                    record_claim_intent(self.item_log, claim)
            if finish is not None and finish.fresh:
                crashpoint("finish.intent_committed")
            if claims:
                crashpoint("claim.intent_committed")
        if finish is not None:
            self._move_finishes(finish)
        for claim in claims:
            claim.ticket = self.mover.send("claim", claim.moves)

    def _next_entries(self, now: float) -> list[Entry]:
        """The next files to claim (up to the room left): checked, settled, not refused."""
        assert self.spool is not None and self.beside is not None
        room = self._room()
        if room <= 0:
            return []
        entries: list[Entry] = []
        seen: set[bytes] = set()
        in_flight = self._names_being_claimed()
        size = 0
        for name, notified in self._next_names(now, room):
            if name in seen or self.routes.is_ignored(name):
                continue
            if name in in_flight or size >= _CLAIM_BYTES:
                # Its claim is with the mover (a new file of the same name may have
                # come meanwhile), or this batch has its bytes: look again next time.
                if notified:
                    self.candidates[name] = None
                else:
                    self.settling[name] = self.mono
                continue
            seen.add(name)
            pausepoint("intake.look")
            found = self.spool.incoming.inspect(name)
            if found is None:
                if self.held:
                    self.held.pop(name, None)
                continue
            if isinstance(found, Refusal):
                if found.kind != "directory":
                    self._refuse(found)
                elif b"/" not in name:
                    self._folder_found(name, found)
                # (A folder inside a folder: the next look goes into it.)
                continue
            age = now - max(found.mtime_ns, found.ctime_ns) / 1e9
            hold = self._tool_hold(name, found.size, age)
            if hold is not None:
                self._hold(name, hold, age)
                continue
            if self.held:
                self.held.pop(name, None)
            if not notified and age < self.config.settle_time:
                # Found by a scan and still changing: its writer may be at work.
                if len(self.settling) < _MAX_SETTLING:
                    self.settling[name] = self.mono + self.config.settle_time - age
                else:
                    self.rescan_pending = self.rescan_pending or "settling"
                continue
            # Evidence beats timing: a close event or a settled file whose writer
            # still holds it open (another descriptor, or reopened).  The claim
            # asks the kernel after its rename (spool.working.hash), which sees
            # every writer: a file found held open there is put back and, from
            # then on, asked about here first, before any rename.  So a file
            # held open long costs one claim and put-back, not one a look; and
            # every other file one lease probe, not two (measured: 10 us a file).
            if found.name in self.held_open and self.spool.incoming.held_open(found):
                self._found_held_open(found)
                continue
            entries.append(found)
            size += found.size
        return entries

    def _tool_hold(self, name: bytes, size: int, age: float) -> Hold | None:
        """What a rule of tool_files says of NAME, judged among the names beside it."""
        assert self.spool is not None and self.beside is not None
        # A database's wait for its journal is asked by the claim, once it has read
        # the file's first bytes (_database_claimed); here only for one found so.
        journals = name in self.databases
        if b"/" not in name:
            return self.routes.tool_names.hold(name, size, age, self.beside, journals)
        folder, base = split_name(name)
        try:
            fd = open_folder(self.spool.dirs.incoming, folder)
        except OSError:
            return None  # gone: its claim finds that out
        try:
            return self.routes.tool_names.hold(base, size, age, Beside(fd), journals)
        finally:
            os.close(fd)

    def _database_claimed(self, name: bytes, head: bytes) -> Hold | None:
        """Asked by the claim of each file it read (spool.settings.judge_claimed): a SQLite
        database with a journal or a log beside it in incoming/ goes back there."""
        assert self.spool is not None and self.beside is not None
        rules = self.routes.tool_names
        if not rules.sqlite or not (head == b"" or head.startswith(DATABASE_MAGIC)):
            return None  # nearly every file: not a database
        folder, base = split_name(name)
        if not folder:
            return rules.database_waits(name, head, self.beside)
        try:
            fd = open_folder(self.spool.dirs.incoming, folder)
        except OSError:
            return None
        try:
            return rules.database_waits(base, head, Beside(fd))
        finally:
            os.close(fd)

    # --- folders dropped into incoming/ (folders.py) -------------------------

    def _folder_found(self, name: bytes, seen: Refusal | None = None) -> None:
        """A folder directly in incoming/: its files processed, or refused if
        ``recursive`` is off.  SEEN: what a look at it said, if one was made."""
        assert self.spool is not None
        if self.routes.is_ignored(name):
            return  # hidden or temporary: rsync's --partial-dir, for one
        if self.config.recursive:
            if self.folders.found(name, self.mono):
                self.log.info("folder.found", file=name)
            return
        if seen is None:
            found = self.spool.incoming.inspect(name)
            if not isinstance(found, Refusal):
                return  # gone, or not a folder after all: a look at it decides
            seen = found
        self._refuse(
            Refusal(
                name,
                "a folder (recursive is off: only files directly in incoming/ are processed)",
                seen.dev,
                seen.ino,
                "directory",
            )
        )

    def _look_into_folders(self) -> None:
        """Every second while there are folders: their files join the names that
        settle (found by a look, not by inotify), emptied folders go."""
        assert self.spool is not None
        look = self.folders.look(
            self.spool, self.mono, _MAX_SETTLING, self.config.remove_empty_folders_after
        )
        settling = self.settling
        for name in look.names:
            if len(settling) >= _MAX_SETTLING:
                break
            if name not in settling and name not in self.candidates:
                settling[name] = self.mono
        for refusal in look.refused:
            self._refuse(refusal)
        for folder in look.removed:
            self.log.info("folder.removed", file=folder, detail="emptied")

    def _hold(self, name: bytes, hold: Hold, age: float) -> None:
        """Keep NAME waiting, as a rule says; logged once if that lasts too long."""
        held = self.held.get(name)
        if held is None:
            held = self.held[name] = Held(hold.rule, self.mono, hold.grace is None)
            # A journal made again by each transaction is logged once a minute, not each time.
            logged = self.held_logged.get(name)
            if logged is None or self.mono - logged >= _HELD_LOG_EVERY:
                self.held_logged[name] = self.mono
                self.held_logged.move_to_end(name)
                if len(self.held_logged) > _MAX_REFUSED:
                    self.held_logged.popitem(last=False)
                self.log.info("file.held", file=name, rule=hold.rule, reason=hold.reason)
        elif not held.warned and self.mono - held.since >= self.routes.tool_names.held_warning:
            held.warned = True
            self.log.warning(
                "file.held_long",
                file=name,
                rule=hold.rule,
                reason=hold.reason,
                seconds=round(self.mono - held.since),
                detail="not claimed while this lasts; see tool_files in the configuration",
            )
        # A grace ends at a known age; a file beside it may go at any time.
        wait = _HOLD_RECHECK if hold.grace is None else max(hold.grace - age, 0.0) + 0.01
        if len(self.settling) < _MAX_SETTLING:
            self.settling[name] = self.mono + wait
        else:
            self.rescan_pending = self.rescan_pending or "settling"

    def _found_held_open(self, entry: Entry) -> None:
        """Not claimed: a process holds it open for writing.  Looked at again at its
        close event, or after a while; logged once per file and episode."""
        key = (entry.dev, entry.ino)
        if self.held_open.get(entry.name) != key:
            self.held_open[entry.name] = key
            self.held_open.move_to_end(entry.name)
            if len(self.held_open) > _MAX_REFUSED:
                self.held_open.popitem(last=False)
            self.log.info(
                "file.held_open",
                file=entry.name,
                detail="a process holds it open for writing; claimed once it is closed",
            )
        if len(self.settling) < _MAX_SETTLING:
            self.settling[entry.name] = self.mono + max(self.config.settle_time, _OPEN_RECHECK)
        else:
            self.rescan_pending = self.rescan_pending or "settling"

    def _leases_refused(self, why: str) -> None:
        self.log.warning(
            "lease.unavailable",
            reason=why,
            detail="cannot tell whether a writer holds a file open; "
            "close events and settle_time decide alone",
        )

    def _goes_straight_on(self, c: Claimed) -> bool:
        """Whether a file just claimed has no stage to run: it is finished this pass."""
        pipeline = self.routes.get(c.pipeline)
        return pipeline is None or not pipeline.stages

    def _claimed(self, result: ClaimResult, now: float) -> None:
        """What a claim batch did, now recorded: the files claimed, put back or refused."""
        if result.full is not None:
            self._disk_full(result.full)
        for refusal in result.refused:
            self._refuse(refusal)
        for entry in result.held_open:
            self._found_held_open(entry)
        for entry, why in result.kept_by_rule:
            assert isinstance(why, Hold)
            self.databases[entry.name] = None
            if len(self.databases) > _MAX_REFUSED:
                self.databases.popitem(last=False)
            self._hold(entry.name, why, 0.0)
        for name in result.busy:
            # Put back: claimed once its writer closes it, or once it settles.
            # Logged once, not at each put-back of a file written for long.
            if name not in self.busy:
                self.log.info("file.busy", file=name, detail="still being written; put back")
                self.busy[name] = None
                if len(self.busy) > _MAX_BUSY:
                    self.busy.popitem(last=False)
            self.settling[name] = self.mono + self.config.settle_time
        for held in result.held:
            self.kept[held.item_id] = Waiting(held, self.mono + self.config.settle_time)
            self.log.info(
                "file.busy",
                item=held.item_id,
                file=held.name,
                detail="still being written, and a new file of its name came meanwhile: "
                "kept in working/ as an earlier delivery, claimed once it settles",
            )
        for name, working_name in result.taken:
            # Only dropline writes into working/; an entry it did not know of has
            # that name: taken from now on, the file is claimed under another name.
            self.stranded.add(working_name)
            self.candidates[name] = None
            self.log.warning(
                "claim.name_taken",
                file=name,
                working=working_name,
                detail="an entry unknown to dropline has this name in working/; "
                "claimed again under a unique name",
            )
        for name in result.lost:
            self.log.info("file.gone", file=name, detail="gone from incoming/ before its claim")
        self.stranded.update(result.stranded)
        for c in result.claimed:
            self._admitted(c, now)

    def _look_at_kept(self, now: float) -> None:
        """Claim the kept files that have settled (holding.py); give back the
        ones that can no longer be claimed."""
        assert self.spool is not None and self.db is not None and self.item_log is not None
        claimed: list[Claimed] = []
        given_up: list[tuple[Waiting, Refusal, bytes | None]] = []
        for item_id, waiting in list(self.kept.items()):
            if waiting.due > self.mono:
                continue
            found = look(self.spool, self.routes, waiting, now, self.mono, self.config.settle_time)
            if found is None:
                continue
            if isinstance(found, Refusal):
                # Too large by now, unreadable (or removed by hand): it cannot be
                # claimed; back into incoming/, where it is refused like any such file.
                back = None
                if found.reason != GONE:
                    held = waiting.held
                    back = self.spool.working.unclaim_somewhere(
                        held.working_name, held.name, item_id
                    )
                    if back is None:  # the filesystem is full: kept, tried again later
                        waiting.due = self.mono + max(self.config.settle_time, 1.0)
                        continue
                given_up.append((waiting, found, back))
            else:
                claimed.append(found)
            del self.kept[item_id]
        if not claimed and not given_up:
            return
        if given_up:
            self.spool.sync()
        with self.db.transaction():
            record_active(self.item_log, claimed, now)
            for c in claimed:
                self.item_log.add_event(
                    c.item_id, "claimed", now, "an earlier delivery kept in working/, now settled"
                )
            for waiting, _, _ in given_up:
                self.item_log.delete_item(waiting.held.item_id)
        crashpoint("claim.committed")
        for waiting, refusal, back in given_up:
            if back is not None:
                self._refuse(Refusal(back, refusal.reason, refusal.dev, refusal.ino, refusal.kind))
            else:
                self.log.error("file.vanished", item=waiting.held.item_id, file=waiting.held.name)
        for c in claimed:
            self._admitted(c, now)

    def _track(self, c: Claimed) -> Item:
        """A file now in working/ and recorded active (claimed, or back from failed/)."""
        item = Item(
            c.item_id,
            c.name,
            c.working_name,
            c.pipeline,
            sha256=c.sha256,
            created_at=c.created_at,
            fingerprint=(c.size, c.ctime_ns),
            fingerprint_pass=self.passes,
        )
        self.items[item.id] = item
        self.ready.append(item.id)
        return item

    def _admitted(self, c: Claimed, now: float) -> None:
        if self.held_open:
            self.held_open.pop(c.name, None)  # the episode ends
        if self.databases:
            self.databases.pop(c.name, None)
        item = self._track(c)
        if self.busy:
            self.busy.pop(c.name, None)
        self.log.info(
            "file.claimed", item=item.id, file=item.name, pipeline=item.pipeline, size=c.size
        )

    def _room(self) -> int:
        """How many more files may be taken into working/ in this pass."""
        claiming = sum(len(batch.plans) for batch in self.claiming) + len(self.kept)
        return min(self.config.max_in_flight - len(self.items) - claiming, self.config.batch_size)

    def _names_in_working(self) -> set[bytes]:
        """The names taken in working/ (only dropline writes there), or about to be."""
        names = {item.working_name for item in self.items.values()} | self.stranded
        names |= {waiting.held.working_name for waiting in self.kept.values()}
        for batch in self.claiming:
            names |= batch.working_names
        return names

    def _names_being_claimed(self) -> set[bytes]:
        """Names in incoming/ whose claim is with the mover."""
        return {entry.name for batch in self.claiming for _, entry, _ in batch.plans}

    def _serve_requests(self, now: float) -> None:
        """Apply requests the command line left in the database (`dropline retry`,
        `dropline reload`)."""
        if self.mono < self._next_requests:
            return
        self._next_requests = self.mono + _REQUESTS_EVERY
        assert (
            self.db is not None
            and self.item_log is not None
            and self.requests is not None
            and self.spool is not None
        )
        # Reloads first, and whatever the room or the disk: they move no file.
        self._serve_reloads()
        room = self._room()
        if room <= 0 or self.disk_problem:
            return
        # A reload request that came after the query above waits for the next look.
        requests = [r for r in self.requests.open_requests(room) if r[1] != RELOAD]
        if not requests:
            return
        retry_ids = [item_id for _, kind, item_id in requests if kind == "retry"]
        result = requeue_batch(
            self.item_log, self.spool, self.routes, retry_ids, now, self._names_in_working()
        )
        answers = []
        for request_id, kind, item_id in requests:
            if kind != "retry":
                answers.append((request_id, f"unknown request {kind!r}"))
            else:
                answers.append((request_id, result.answer(item_id)))
        with self.db.transaction():
            self.requests.finish_requests(answers, now)
        for r in result.requeued:
            self.counts["failed"] = max(0, self.counts["failed"] - 1)
            self._track(r)
            self.log.info("file.requeued", item=r.item_id, file=r.name, pipeline=r.pipeline)
        for item_id, why in result.refused.items():
            self.log.warning("retry.refused", item=item_id, reason=why)
        for item_id in result.vanished:
            self.log.error("file.vanished", item=item_id, detail="missing from failed/")

    def _refuse(self, refusal: Refusal) -> None:
        key = (refusal.dev, refusal.ino)
        if self.refused.get(refusal.name) == key:
            return
        self.refused[refusal.name] = key
        self.refused.move_to_end(refusal.name)
        if len(self.refused) > _MAX_REFUSED:
            self.refused.popitem(last=False)
        self.log.warning("entry.refused", file=refusal.name, reason=refusal.reason)
        self.metrics.entry_refused(refusal.kind)

    # --- dispatching stages -------------------------------------------------

    def _schedule(self, item: Item, now: float) -> None:
        if item.next_at is not None and item.next_at > now:
            # The due time is recorded in wall time; the loop waits in monotonic time.
            heapq.heappush(self.retry_heap, (self.mono + item.next_at - now, item.id))
        else:
            self.ready.append(item.id)

    def _dispatch(self, now: float) -> None:
        assert self.db is not None and self.item_log is not None and self.pool is not None
        jobs: list[tuple[Item, Pipeline, int, int]] = []
        stopping = self.stopping_since is not None
        deferred: list[str] = []
        while self.ready:
            item_id = self.ready.popleft()
            item = self.items.get(item_id)
            if item is None or item_id in self.running:
                continue
            pipeline = self.routes.get(item.pipeline)
            if item.pipeline is None:
                self._plan_finish(item, "failed", "no pipeline matches this name", None)
                continue
            if pipeline is None:
                self._plan_finish(
                    item, "failed", f'pipeline "{item.pipeline}" is no longer configured', None
                )
                continue
            failure = item.metadata.get(FAILURE)
            last = len(pipeline.stages) + (len(pipeline.on_failure) if failure else 0)
            done = item.next_stage >= last
            if not done and (stopping or len(self.running) + len(jobs) >= self.pool.size):
                deferred.append(item_id)
                continue
            if done and self._still_held_open(item):
                continue
            if self._changed_under_us(item):
                continue
            if done and isinstance(failure, dict):
                self._finish_failure(item, failure)
                continue
            if done:
                self._plan_finish(item, "archived", "", None)
                continue
            jobs.append((item, pipeline, item.next_stage, item.attempt + 1))
        self.ready.extend(deferred)
        if not jobs:
            return
        started: list[tuple[Item, Pipeline, int, int, int]] = []
        with self.db.transaction():
            for item, pipeline, index, attempt in jobs:
                stage = pipeline.stages_all[index]
                attempt_id = self.item_log.record_stage_start(
                    item.id, index, stage.name, attempt, now
                )
                started.append((item, pipeline, index, attempt, attempt_id))
        crashpoint("stage.start_committed")
        for item, pipeline, index, attempt, attempt_id in started:
            stage = pipeline.stages_all[index]
            self._token += 1
            cancel = threading.Event()
            log = self.log.bind(
                item=item.id, file=item.name, pipeline=pipeline.name, stage=stage.name
            )
            ctx = StageContext(
                item_id=item.id,
                path=self.config.working / os.fsdecode(item.working_name),
                name=os.fsdecode(item.name),
                pipeline=pipeline.name,
                stage=stage.name,
                attempt=attempt,
                metadata=dict(item.metadata),
                log=log,
                timeout=stage.config.timeout,
                cancel=cancel,
                scratch=self.scratch_root / item.id,
            )
            self.ran_stages.add(item.id)
            self.running[item.id] = Running(
                self._token,
                attempt_id,
                index,
                stage.name,
                stage.runs_in,
                self.mono,
                self.mono + stage.config.timeout,
                cancel,
            )
            log.info("stage.started", attempt=attempt)
            self.pool.submit(StageJob(item.id, self._token, stage, ctx))

    def _still_held_open(self, item: Item) -> bool:
        """Whether a process still holds the file open for writing as it is about
        to leave working/: then it waits (looked at again after a while), and
        once closed its fingerprint decides (``_changed_under_us``)."""
        assert self.spool is not None
        if item.fingerprint_pass == self.passes:
            # Probed at its claim this very pass, after the rename: in working/
            # no new writer can open it since.
            return False
        held = self.spool.working.held_open(item.working_name)
        if not held:
            self.held_items.discard(item.id)
            return False
        if item.id not in self.held_items:
            self.held_items.add(item.id)
            self.log.warning(
                "file.held_open",
                item=item.id,
                file=item.name,
                detail="a process still holds it open for writing in working/; "
                "it leaves once closed",
            )
        recheck = max(self.config.settle_time, _OPEN_RECHECK)
        heapq.heappush(self.retry_heap, (self.mono + recheck, item.id))
        return True

    def _changed_under_us(self, item: Item) -> bool:
        """Fail the file if its content changed since the claim (or since the last stage).

        The claim moved it out of every dropper's reach, so a change means a
        writer kept it open and wrote after the claim: what a stage would see, or
        archive/ would keep, is not what was dropped.
        """
        assert self.spool is not None
        if item.fingerprint_pass == self.passes:
            # Taken by this very pass (the claim's fstat, milliseconds ago): a second
            # look now would narrow no window the move itself does not leave open.
            return False
        seen = self.spool.working.fingerprint(item.working_name)
        if item.fingerprint is None or seen is None or seen == item.fingerprint:
            return False
        reason = (
            "modified after it was claimed (a writer still held it open): "
            f"size {item.fingerprint[0]} -> {seen[0]}"
        )
        item.fingerprint = seen  # on_failure stages may still run on what is there
        self._fail(item, reason, None, time.time())
        return True

    # --- finishing ----------------------------------------------------------

    def _fail(
        self, item: Item, reason: str, stage: str | None, now: float, *, stopping: bool = False
    ) -> None:
        """The file failed: its pipeline's on_failure stages first, if any, then failed/.

        The failure is recorded in the item's metadata (FAILURE), which the
        on_failure stages read and a restart resumes from.
        """
        assert self.db is not None and self.item_log is not None
        pipeline = self.routes.get(item.pipeline)
        earlier = item.metadata.get(FAILURE)
        if isinstance(earlier, dict):  # failed again while notifying: the first reason stands
            self._finish_failure(item, earlier)
            return
        if pipeline is None or not pipeline.on_failure or stopping:
            self._plan_finish(item, "failed", reason, stage)
            return
        item.metadata[FAILURE] = {"stage": stage, "reason": reason, "attempts": item.attempt}
        item.next_stage = len(pipeline.stages)
        item.attempt = 0
        item.next_at = None
        if self.db.in_transaction:
            self.item_log.set_progress(item.id, item.next_stage, 0, None, item.metadata, now)
        else:
            with self.db.transaction():
                self.item_log.set_progress(item.id, item.next_stage, 0, None, item.metadata, now)
        self.ready.append(item.id)

    def _finish_failure(self, item: Item, failure: dict[str, Any]) -> None:
        """To failed/ for the reason recorded when it failed (after its on_failure stages)."""
        attempts = failure.get("attempts")
        item.attempt = attempts if isinstance(attempts, int) else item.attempt
        stage = failure.get("stage")
        self._plan_finish(item, "failed", str(failure.get("reason")), stage or None)

    def _plan_finish(self, item: Item, outcome: str, reason: str, stage: str | None) -> None:
        self.to_finish.append(
            Finish(
                item_id=item.id,
                name=item.name,
                working_name=item.working_name,
                outcome=outcome,
                reason=reason,
                pipeline=item.pipeline,
                stage=stage,
                attempts=item.attempt,
                sha256=item.sha256,
                created_at=item.created_at,
            )
        )

    def _move_finishes(self, batch: FinishBatch) -> None:
        """The reasons of the failures first, then the moves: by the mover, or here."""
        assert (
            self.db is not None
            and self.item_log is not None
            and self.spool is not None
            and self.mover is not None
        )
        write_reasons(self.spool, batch)
        moves = None if batch.full else batch.moves(self.spool)
        if moves is not None:
            batch.ticket = self.mover.send("finish", moves)
            self.finishing.append(batch)
            return
        # A full disk stopped the reasons, or a destination on another
        # filesystem needs a copy: this batch is moved here, at once.
        move_here(self.item_log, self.spool, batch)
        crashpoint("finish.synced")
        with self.db.transaction():
            record_finished(self.item_log, batch)
        crashpoint("finish.committed")
        self._ended(batch)

    def _ended(self, batch: FinishBatch) -> None:
        """A finish batch recorded: forget and log the files that ended; keep the others."""
        for f in batch.finishes:
            if not f.state:  # a full disk stopped it: recorded as finishing, tried again
                self.to_finish.append(f)
                continue
            self.items.pop(f.item_id, None)
            if f.item_id in self.ran_stages:
                self.ran_stages.discard(f.item_id)
                remove_scratch(self.scratch_root, [f.item_id])
            self._log_finish(f)
        if self.to_finish:
            self._finish_retry_at = self.mono + _SPACE_CHECK_EVERY
            self._disk_full(DiskFullError("no space left to move files to their end"))

    # --- free space -----------------------------------------------------------

    def _space_ok(self) -> bool:
        """Whether claiming may go on: every folder's filesystem above min_free_space."""
        if self.mono < self._next_space_check:
            return not self.disk_problem
        self._next_space_check = self.mono + _SPACE_CHECK_EVERY
        problem = free_space_problem(self.config)
        if problem and not self.disk_problem:
            self.log.warning("disk.low", problem=problem, action="claiming paused")
        elif not problem and self.disk_problem:
            self.log.info("disk.ok", action="claiming resumed")
        self.disk_problem = problem
        return not problem

    def _journal_ok(self) -> bool:
        """Whether claiming may go on: journald takes the entries as fast as they come.

        While many wait for it (journal.py), no new file is claimed: the files in
        flight still end and their ends still fit in the queue, so every file's
        end reaches the journal; the loop, its stages and its watchdog go on.
        """
        behind = journal_behind()
        if behind and not self.journal_paused:
            self.log.warning("journal.behind", pending=journal_waiting(), action="claiming paused")
        elif not behind and self.journal_paused:
            self.log.info("journal.caught_up", action="claiming resumed")
        self.journal_paused = behind
        return not behind

    def _disk_full(self, exc: DiskFullError) -> None:
        """ENOSPC: pause claiming until the next check finds space again."""
        if not self.disk_problem:
            self.log.warning("disk.full", error=str(exc), action="claiming paused")
        self.disk_problem = str(exc)
        self._next_space_check = self.mono + _SPACE_CHECK_EVERY

    def _log_finish(self, f: Finish) -> None:
        where = os.path.join(f.final_dir, os.fsdecode(f.final_name))
        self.metrics.file_finished(f.pipeline, f.state, time.time() - f.created_at)
        if f.state == "archived":
            self.counts["archived"] += 1
            self.log.info(
                "file.archived", item=f.item_id, file=f.name, pipeline=f.pipeline, to=where
            )
        elif f.state == "failed":
            self.counts["failed"] += 1
            self.log.error(
                "file.failed",
                item=f.item_id,
                file=f.name,
                pipeline=f.pipeline,
                stage=f.stage,
                to=where,
                reason=f.reason,
            )
        else:
            self.log.error("file.vanished", item=f.item_id, file=f.name, pipeline=f.pipeline)

    # --- housekeeping -------------------------------------------------------

    def status_line(self) -> str:
        refused = ""
        if self.reload_refused:
            error = self.reload_refused
            if len(error) > _STATUS_ERROR_MAX:
                error = error[: _STATUS_ERROR_MAX - 3] + "..."
            refused = f"reload refused: {error}; running the previous configuration; "
        paused = refused + (f"PAUSED, {self.disk_problem}; " if self.disk_problem else "")
        if self.journal_paused:
            paused += "PAUSED, journald is not reading; "
        waiting = len(self.candidates) + len(self.settling)
        scanning = ", scanning" if self.scan is not None else ""
        return (
            f"{paused}in flight {len(self.items)}, running {len(self.running)}, "
            f"waiting {waiting}{scanning}, archived {self.counts['archived']}, "
            f"failed {self.counts['failed']}"
        )

    def _housekeeping(self) -> None:
        mono = self.mono
        self._check_watch()
        if self.folders.known and mono >= self.folders.next_look:
            self._look_into_folders()
        if self.scan is None and (self.rescan_pending or mono >= self.next_rescan):
            if self.rescan_pending in ("overflow", "watch"):
                self.log.info("scan.started", reason=self.rescan_pending)
            self._start_scan()
            self.metrics.rescan()
        # A few attribute stores, and a comparison until the textfile is due: every pass.
        self.metrics.set_gauges(
            len(self.candidates) + len(self.settling), len(self.items), len(self.running)
        )
        self.metrics.tick(mono)
        if mono >= self._next_status:
            self._next_status = mono + _STATUS_EVERY
            self.notifier.status(self.status_line())
        self._feed_watchdog(mono)
        # READY=1, STOPPING=1, ... that found systemd's queue full: never a blocking send.
        self.notifier.retry(mono)

    def _check_watch(self) -> None:
        """About once a second: is the inotify reader still reading?"""
        if self.watch is None or self.mono < self._next_watch_check:
            return
        self._next_watch_check = self.mono + _WATCH_CHECK_EVERY
        reason = self.watch.failure()
        if reason is not None:
            self._watch_ended(reason)

    def _watch_ended(self, reason: str) -> None:
        """Replace a watch that ended while incoming/ is still the folder it watched,
        then rescan (files may have arrived unseen); otherwise exit.  Never go on
        without a watch."""
        if self.stopping_since is not None or self.watch is None:
            return
        self.log.error("watch.failed", reason=reason)
        old = self.watch
        old.close()
        now = self.mono
        self._watch_failures.append(now)
        while self._watch_failures and self._watch_failures[0] < now - _WATCH_FAILURE_WINDOW:
            self._watch_failures.popleft()
        if len(self._watch_failures) > _WATCH_FAILURES_ALLOWED:
            raise FatalIOError(
                f"{reason}; the watch on incoming/ failed {len(self._watch_failures)} times "
                f"in {_WATCH_FAILURE_WINDOW:.0f} s"
            )
        incoming = self.config.incoming
        try:
            st = os.stat(incoming, follow_symlinks=False)
        except OSError as exc:
            raise FatalIOError(f"{reason}; incoming/ is gone: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != self._incoming_id:
            raise FatalIOError(f"{reason}; incoming/ is no longer the folder dropline watched")
        try:
            self.watch = IncomingWatch(incoming, self.inbox, old.generation + 1)
        except OSError as exc:
            raise FatalIOError(f"{reason}; the watch could not be placed again: {exc}") from None
        # The new watch first, then the scan: nothing that arrived in between is missed.
        self.rescan_pending = "watch"
        self.log.info("watch.restored", generation=self.watch.generation)

    def _feed_watchdog(self, mono: float | None = None) -> None:
        """WATCHDOG=1 if due.  Called once a pass, and by the loop while it reads a
        big file (gigabytes take seconds): the loop is at work, not stuck."""
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        if mono is None:
            mono = time.monotonic()
        if mono >= self._next_ping:
            self._next_ping = mono + interval
            self.notifier.watchdog()

    def idle(self) -> bool:
        return not (
            self.items
            or self.candidates
            or (self.settling and not self._only_held_waiting())
            or self.scan is not None
            or self.folders.unlooked
            or self.to_finish
            or self.claiming
            or self.finishing
            or self.kept
        )

    def _only_held_waiting(self) -> bool:
        """Whether every name settling is held until a file beside it goes: waiting on
        a writer that may never come back, so not work left for --exit-when-idle."""
        held = self.held
        return all(name in held and held[name].waits for name in self.settling)

    def _should_exit(self) -> bool:
        if self.stopping_since is not None:
            if not (self.running or self.to_finish or self.claiming or self.finishing):
                return True
            if self.mono >= self.stopping_since + self.config.stop_timeout:
                # Out of patience: stop the stages still running; idempotent ones run again
                # after the restart, non-idempotent ones fail as indeterminate.
                for running in self.running.values():
                    running.cancel.set()
                if self.mono >= self.stopping_since + self.config.stop_timeout + 0.4:
                    self.log.warning("daemon.abandoned", stages=len(self.running))
                    return True
            return False
        if not (self.exit_when_idle and self.idle()):
            return False
        # Idle, but a `dropline retry` may be waiting for an answer: serve it first.
        assert self.requests is not None
        if self.stopping_since is None and self.requests.open_requests(1):
            self._next_requests = self.mono
            return False
        return True

    # --- reload -------------------------------------------------------------

    def _serve_reloads(self) -> None:
        """Answer `dropline reload`: one reading of the file, made after every request
        it answers was left, so the verdict is about the file as it is now."""
        assert self.db is not None and self.requests is not None
        requests = self.requests.open_requests(_RELOADS_AT_ONCE, kind=RELOAD)
        if not requests:
            return
        verdict = self._reload().to_json()
        with self.db.transaction():
            self.requests.finish_requests([(r[0], verdict) for r in requests], time.time())

    def _reload(self) -> Verdict:
        """Read the file again: apply it whole, or refuse it whole and keep the old one."""
        self.notifier.reloading()
        self.log.info("daemon.reloading", config=str(self.config.path))
        try:
            new = load_config(self.config.path)
            for key in ("data_dir", "state_db"):
                before, after = getattr(self.config, key), getattr(new, key)
                if after != before:
                    raise ConfigError(
                        f"cannot change on reload (from {before} to {after}); restart dropline",
                        file=str(new.path),
                        line=new.lines.get(key, 0),
                        key=key,
                    )
            check_paths(new)
            routes = Routes(new)
        except DroplineError as exc:
            self.reload_refused = str(exc)
            self.log.error("config.rejected", error=str(exc), kept="the previous configuration")
            verdict = Verdict(False, error=str(exc), config=str(self.config.path))
        else:
            warnings = restart_needed(self.started_config, new)
            for key, warning in warnings:
                if key == "metrics":  # the event it has always had
                    self.log.warning(
                        "config.metrics_unchanged",
                        detail="metrics change on restart",
                        warning=warning,
                    )
                else:
                    self.log.warning("config.restart_needed", key=key, warning=warning)
            self.config, self.routes = new, routes
            # The spool's settings are read at each claim and finish: they apply now.
            if self.spool is not None:
                self.spool.settings.max_file_size = new.max_file_size
                self.spool.settings.layout = new.archive_layout
            # A shorter rescan interval takes effect now, not after the old one runs out.
            self.next_rescan = min(self.next_rescan, self.mono + new.rescan_interval)
            if not new.recursive and self.folders.known:
                # Its folders are refused from now on: the rescan finds them again.
                self.folders.known.clear()
                self.rescan_pending = self.rescan_pending or "reload"
            self.reload_refused = ""
            names = tuple(p.name for p in routes.pipelines)
            self.log.info("daemon.reloaded", pipelines=list(names))
            verdict = Verdict(
                True, warnings=tuple(w for _, w in warnings), config=str(new.path), pipelines=names
            )
        self.notifier.ready(self.status_line())
        return verdict
