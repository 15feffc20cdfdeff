"""Stage attempts in the worker pool: each recorded before it starts, tracked
while it runs (its token, its deadline, its cancel event), abandoned when a
Python stage outlives its timeout, matched with its result when it ends."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..crashpoints import crashpoint
from ..pipeline import Pipeline
from ..scratch import remove as remove_scratch
from ..stages import StageContext
from ..state import ItemLog
from ..workers import StageJob, StageResult, WorkerPool
from .context import LoopContext
from .items import Item, Running
from .pacing import Pacing

PY_TIMEOUT_GRACE = 1.0  # a Python stage past its timeout by this much is abandoned

Job = tuple[Item, Pipeline, int, int]  # the item, its pipeline, the stage index, the attempt


class Attempts:
    """The attempts running in the worker pool, by item id."""

    def __init__(
        self, ctx: LoopContext, items: ItemLog, pool: WorkerPool, scratch_root: Path
    ) -> None:
        self.ctx = ctx
        self.item_log = items
        self.pool = pool
        self.scratch_root = scratch_root
        self.running: dict[str, Running] = {}
        self.ran_stages: set[str] = set()  # items that may have a scratch folder
        self.pacing = Pacing(pool.size)
        self.affinity: dict[str, int] = {}  # item id -> the worker that ran its last stage
        self._token = 0

    def free(self) -> int:
        """Room in the pool for more attempts (running, or at hand for a worker),
        were they all of stages measured quick (``pacing.py``)."""
        return self.pacing.most() - len(self.running)

    def begun(self) -> int:
        """How many attempts a worker has started (not those handed out ahead, at hand).

        At most one per worker: an attempt ended whose result the loop has not
        read yet still counts beside the next one its worker began, and the
        attempts in worker processes share one begun event.
        """
        started = sum(1 for r in self.running.values() if r.begun is None or r.begun.is_set())
        return min(started, self.pool.size)

    def next_deadline(self) -> float | None:
        if not self.running:
            return None
        return min(r.deadline for r in self.running.values()) + PY_TIMEOUT_GRACE

    def start(
        self,
        jobs: list[Job],
        now: float,
        screen: Callable[[list[Job]], set[str]] | None = None,
    ) -> None:
        """Record the attempts (one commit), then hand them to the workers.

        SCREEN, in the same commit, names the items whose stage does not start
        after all (duplicates, ``duplicates.py``): they are left out.

        The commit is fsync'd only when one of the stages is declared
        ``idempotent: false``: such a stage never runs before its start is
        durable, so that after a crash or a power loss it is known to have
        (maybe) run and is not run again.  An idempotent stage whose start a
        power loss takes back simply runs again (``state/db.py``).  So is one
        of a stage that rewrites the file (``modifies``): the claim before it
        may not be on disk yet, and recovery finds a claim of that inode only;
        a file rewritten under a claim a power loss took back would come back
        under a new item id (and a new idempotency key for the stages after).
        """
        durable = any(
            not (c := p.stages_all[i].config).idempotent or c.modifies for _, p, i, _ in jobs
        )
        with self.item_log.db.transaction(durable=durable):
            if screen is not None:
                held = screen(jobs)
                jobs = [job for job in jobs if job[0].id not in held]
            rows = [(item.id, index, p.stages_all[index].name, n) for item, p, index, n in jobs]
            attempt_ids = self.item_log.record_stage_starts(rows, now) if rows else []
        crashpoint("stage.start_committed")
        mono, working = self.ctx.mono, self.ctx.config.working
        # The attempts in worker processes share one cancel event (set only all
        # at once, at a stop) and one begun event (looked at only for a stage in
        # a thread): two fewer objects per file.
        shared_cancel, shared_begun = threading.Event(), threading.Event()
        handed: list[StageJob] = []
        for (item, pipeline, index, attempt), attempt_id in zip(jobs, attempt_ids, strict=True):
            stage = pipeline.stages_all[index]
            kind = stage.runs_in
            self._token += 1
            cancel = shared_cancel if kind == "process" else threading.Event()
            # The stage's own log (ctx.log), for a stage run here; one in a worker
            # process makes its own there, at its first line.
            log = (
                None
                if kind == "process"
                else self.ctx.log.bind(
                    item=item.id, file=item.name, pipeline=pipeline.name, stage=stage.name
                )
            )
            context = StageContext(
                item_id=item.id,
                path=working / os.fsdecode(item.working_name),
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
            ahead = self.pacing.ahead(pipeline.name, stage)
            begun = shared_begun if kind == "process" else threading.Event()
            # Back to the worker whose child ran the file's last stage: its parse is
            # there.  Not a stage declared idempotent: false: that one goes to a
            # free worker, never behind another attempt in a busy one's pipe.
            ahead_ok = kind == "process" and stage.config.idempotent
            prefer = self.affinity.get(item.id) if ahead_ok else None
            job = StageJob(item.id, self._token, stage, context, begun, ahead, prefer)
            self.running[item.id] = Running(
                self._token,
                attempt_id,
                index,
                stage.name,
                kind,
                mono,
                mono + stage.config.timeout,
                cancel,
                begun,
                pipeline.name,
            )
            self.ctx.events.stage_started(item.id, item.name, pipeline.name, stage.name, attempt)
            handed.append(job)
        self.pool.submit_all(handed)

    def ended(self, result: StageResult) -> Running | None:
        """The attempt RESULT ends; None if it was abandoned already (after its
        timeout) and has just returned."""
        running = self.running.get(result.item_id)
        if running is None or running.token != result.token:
            return None
        del self.running[result.item_id]
        if running.kind == "process":
            self.pacing.ran(running.pipeline, running.stage, result.duration)
            if result.worker is not None:
                self.affinity[result.item_id] = result.worker
        return running

    def expired(self) -> list[StageResult]:
        """A Python stage cannot be killed: past its timeout it is abandoned (its
        worker replaced) and ends as a timeout."""
        results = []
        for item_id, running in list(self.running.items()):
            if running.kind != "thread":
                continue
            if running.begun is not None and not running.begun.is_set():
                # Still waiting for a worker: its timeout has not started yet.
                timeout = running.deadline - running.started
                running.started, running.deadline = self.ctx.mono, self.ctx.mono + timeout
                continue
            if self.ctx.mono > running.deadline + PY_TIMEOUT_GRACE:
                running.cancel.set()
                self.pool.abandon_one()
                error = f"timed out after {running.deadline - running.started:.1f} s (abandoned)"
                results.append(StageResult(item_id, running.token, "timeout", error))
        return results

    def stopping(self) -> None:
        """dropline is stopping: the attempts not begun yet are not begun."""
        self.pool.stop_starting()

    def cancel_all(self) -> None:
        """Out of patience while stopping: stop the stages still running."""
        for running in self.running.values():
            running.cancel.set()

    def forget(self, item_id: str) -> None:
        """ITEM_ID ended: its scratch folder, if a stage may have made one, goes."""
        self.affinity.pop(item_id, None)
        if item_id in self.ran_stages:
            self.ran_stages.discard(item_id)
            remove_scratch(self.scratch_root, [item_id])
