"""The scheduler: the files in flight, from their claim to the decision to end them.

It owns the items in working/ (ready to run, waiting for a retry, running a
stage) and hands stage attempts to the worker pool, the pipelines taking
turns; how each attempt ended is recorded and decided by ``recording.py``,
and the ends decided go to ``finishes``, which the loop hands to the
transit.  Pauses, holds and duplicates are ``flow.py``'s.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path
from typing import Any

from ..lifecycle.claim import Claimed
from ..lifecycle.finish import Finish
from ..lifecycle.recovery import finish_for
from ..spool import Spool
from ..stages import FAILURE
from ..state import ItemLog, ItemRow
from ..workers import StageResult, WorkerPool
from .attempts import Attempts, Job
from .context import LoopContext
from .gates import Gates
from .items import Item, Running
from .lookout import changed_since, still_held_open
from .ready import ReadyQueues, stages_of
from .recording import Recording


class Scheduler(Recording):
    """The items in flight and their stage attempts."""

    def __init__(
        self, ctx: LoopContext, items: ItemLog, spool: Spool, pool: WorkerPool, scratch_root: Path
    ) -> None:
        self.ctx = ctx
        self.item_log = items
        self.spool = spool
        self.attempts = Attempts(ctx, items, pool, scratch_root)
        self.items: dict[str, Item] = {}
        self.ready = ReadyQueues()  # by pipeline, so no backlog stands before another's files
        self.gates: Gates | None = None  # paused and held pipelines (set by the daemon)
        self.in_flight: dict[str | None, int] = {}  # items by pipeline, for intake's bound
        self.retry_heap: list[tuple[float, str]] = []  # (monotonic due time, item id)
        self.twins: dict[str, set[str]] = {}  # files waiting for their twin's end
        self.results: list[tuple[StageResult, Item, Running]] = []  # not recorded yet
        self.finishes: list[Finish] = []  # ends decided, for the transit
        self.held_items: set[str] = set()  # found held open in working/, logged once
        # While results are recorded: the rows written at the end of their transaction.
        self._ends: list[tuple[str, str, float | None, int]] | None = None
        self._progress: list[tuple[int, dict[str, Any], str]] | None = None

    # --- what the loop asks ---------------------------------------------------

    @property
    def running(self) -> dict[str, Running]:
        """The attempts running in the pool, by item id."""
        return self.attempts.running

    def has_work(self) -> bool:
        """Results to record, or files ready with a worker free (the loop does not sleep)."""
        if self.results or self.ready.ends:
            return True
        if self.ctx.stopping or not self.ready.queues or self.attempts.free() <= 0:
            return False
        busy, workers = self.ready.busy(self.running, self.items), self.attempts.pool.size
        return self.ready.next_turn(self.ctx.routes, busy, workers) is not None

    def next_deadline(self) -> float | None:
        deadlines = [self.retry_heap[0][0]] if self.retry_heap else []
        running = self.attempts.next_deadline()
        if running is not None:
            deadlines.append(running)
        return min(deadlines) if deadlines else None

    def working_names(self) -> set[bytes]:
        return {item.working_name for item in self.items.values()}

    # --- files in ------------------------------------------------------------

    def resume(self, rows: list[ItemRow], now: float) -> None:
        """At start: the files recovery left in flight."""
        for row in rows:
            item = self.items[row.id] = Item.from_row(row)
            if row.state == "finishing":
                self.finishes.append(
                    finish_for(row, row.outcome or "failed", row.reason or "", None)
                )
            elif item.next_at is not None and item.next_at > now:
                # The due time is recorded in wall time; the loop waits in monotonic time.
                heapq.heappush(self.retry_heap, (self.ctx.mono + item.next_at - now, item.id))
            else:
                self.ready.add(item, self.ctx.routes)
            self._count(item.pipeline, 1)
        self.attempts.ran_stages = set(self.items)

    def admit(
        self, c: Claimed, next_stage: int = 0, metadata: dict[str, Any] | None = None
    ) -> Item:
        """A file now in working/ and recorded active (claimed, back from failed/, or
        a replay's copy, which may start at a later stage with metadata)."""
        item = Item(
            c.item_id,
            c.name,
            c.working_name,
            c.pipeline,
            next_stage,
            metadata=metadata if metadata is not None else {},
            sha256=c.sha256,
            created_at=c.created_at,
            fingerprint=(c.size, c.ctime_ns),
            fingerprint_pass=self.ctx.passes,
        )
        self.items[item.id] = item
        self._count(item.pipeline, 1)
        self.ready.add(item, self.ctx.routes)
        return item

    def ended(self, finishes: list[Finish]) -> None:
        """These files reached their end: forgotten, their scratch folders removed."""
        for f in finishes:
            item = self.items.pop(f.item_id, None)
            if item is not None:
                self._count(item.pipeline, -1)
                if self.gates is not None and item.pipeline is not None:
                    self.gates.probe_lost(item.pipeline, item.id)  # it probes no more
            self.attempts.forget(f.item_id)
        if self.twins:
            self.twins_ended([f.item_id for f in finishes])

    # --- stage results --------------------------------------------------------

    def result(self, result: StageResult) -> None:
        """A worker's result (recorded by the next pass, with the others)."""
        running = self.attempts.ended(result)
        if running is not None:  # (None: abandoned after its timeout, now returned)
            self.results.append((result, self.items[result.item_id], running))

    def collect(self, now: float) -> None:
        """Record the results, abandon Python stages past their timeout, and
        make the retries that are due ready."""
        if self.results:
            self._commit_results(now)
        expired = self.attempts.expired()
        if expired:
            for result in expired:
                self.result(result)
            self._commit_results(now)
        mono = self.ctx.mono
        while self.retry_heap and self.retry_heap[0][0] <= mono:
            _, item_id = heapq.heappop(self.retry_heap)
            item = self.items.get(item_id)
            if item is not None:
                self.ready.add(item, self.ctx.routes)

    # --- dispatching stages -------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Decide the ends of the files with no stage left, then hand the ready
        files' next stages to the free workers, the pipelines taking turns
        (``ready.py``) within their ``concurrency``."""
        ends = self.ready.ends
        while ends:
            job = self._job_for(ends.popleft())
            if job is not None:  # a reload gave its pipeline more stages
                self.ready.push(job[0].id, job[1].name)
        free = self.attempts.free()
        if self.ctx.stopping or free <= 0 or not self.ready.queues:
            return
        jobs = self._probes(free)
        busy = self.ready.busy(self.running, self.items)
        routes, pacing = self.ctx.routes, self.attempts.pacing
        while len(jobs) < free:
            # A pipeline that sets no concurrency may have the whole pool's room
            # (its running stages are bounded by the workers anyway); one that
            # does has no more than that handed out, ahead or not.
            name = self.ready.next_turn(routes, busy, pacing.most())
            if name is None:
                break
            job = self._job_for(self.ready.pop(name))
            if job is None:
                continue
            item, pipeline, index, _ = job
            stage = pipeline.stages_all[index]
            if len(self.running) + len(jobs) >= pacing.limit(pipeline.name, stage):
                # A worker process takes jobs ahead (its child is fed the next
                # files while it runs one), as many as pacing.py allows, and so
                # does a worker running commands (a few); a thread stage waits
                # for a worker of its own, so whose turn it is is decided when one
                # frees.  So does a stage declared idempotent: false: its start is
                # recorded when handed out, and one that waited in the pool at a
                # crash would fail as indeterminate without having run.
                self.ready.put_back(item.id, name)
                break
            jobs.append(job)
            busy[name] = busy.get(name, 0) + 1
            self.ready.served(name, routes)
        if jobs:
            self._start(jobs, now)

    def _job_for(self, item_id: str) -> Job | None:
        """The next stage of a ready file, or None: ended (or waiting) instead."""
        item = self.items.get(item_id)
        if item is None or item_id in self.running:
            return None
        pipeline = self.ctx.routes.get(item.pipeline)
        if item.pipeline is None:
            self._finish(item, "failed", "no pipeline matches this name", None)
            return None
        if pipeline is None:
            why = f'pipeline "{item.pipeline}" is no longer configured'
            self._finish(item, "failed", why, None)
            return None
        failure = item.metadata.get(FAILURE)
        done = item.next_stage >= stages_of(item, pipeline)
        if done and self._still_held_open(item):
            return None
        if self._changed_under_us(item):
            return None
        if done and isinstance(failure, dict):
            self._finish_failure(item, failure)
            return None
        if done:
            self._finish(item, "archived", "", None)
            return None
        return (item, pipeline, item.next_stage, item.attempt + 1)

    # --- files in flight, by pipeline ----------------------------------------------

    def _count(self, pipeline: str | None, delta: int) -> None:
        left = self.in_flight.get(pipeline, 0) + delta
        if left > 0:
            self.in_flight[pipeline] = left
        else:
            self.in_flight.pop(pipeline, None)

    def _still_held_open(self, item: Item) -> bool:
        """Held open for writing as it is about to leave working/: it waits, looked
        at again after a while (``lookout.still_held_open``)."""
        if not still_held_open(self.ctx, self.spool, item, self.held_items):
            return False
        heapq.heappush(self.retry_heap, (self.ctx.mono + self.ctx.open_recheck(), item.id))
        return True

    def _changed_under_us(self, item: Item) -> bool:
        """Failed if its content changed since the claim (``lookout.changed_since``)."""
        reason = changed_since(self.ctx, self.spool, item)
        if reason is None:
            return False
        self._fail(item, reason, None, time.time())
        return True
