"""How pauses, holds and duplicates shape what the scheduler starts and records.

A mixin of ``Scheduler`` (``scheduler.py``), apart so that each file keeps to
one concern: the probes of held pipelines past their closed gate, the
attempts that are not their file's failure (recorded "held", not counted),
and the first stages of pipelines that skip duplicates, judged in the commit
that records their start.  The rules themselves are in ``gates.py`` and
``duplicates.py``.
"""

from __future__ import annotations

import functools
import heapq

from ..config import StageConfig
from ..events import AttemptEnd
from ..lifecycle.decide import Decision
from ..spool import Spool, archive_day
from ..stages import FAILURE
from ..state import ItemLog
from ..workers import StageResult
from .attempts import Attempts, Job
from .context import LoopContext
from .duplicates import WAIT as DUPLICATE_WAIT
from .duplicates import Screened
from .duplicates import screen as screen_duplicates
from .gates import Gates
from .items import Item, Running
from .ready import ReadyQueues


class FlowControl:
    """The scheduler's side of pauses, holds and duplicates."""

    ctx: LoopContext
    items: dict[str, Item]
    ready: ReadyQueues
    attempts: Attempts
    item_log: ItemLog
    retry_heap: list[tuple[float, str]]
    spool: Spool
    twins: dict[str, set[str]]  # an item on its way -> the later files of its content
    gates: Gates | None
    _ends: list[tuple[str, str, float | None, int]] | None

    def _job_for(self, item_id: str) -> Job | None:
        raise NotImplementedError

    def _finish(
        self, item: Item, outcome: str, reason: str, stage: str | None, outside: str = ""
    ) -> None:
        raise NotImplementedError

    def _still_held_open(self, item: Item) -> bool:
        raise NotImplementedError

    def _held_back(
        self,
        result: StageResult,
        item: Item,
        running: Running,
        config: StageConfig | None,
        stopped: bool,
    ) -> bool:
        """Whether the attempt is not the file's failure (``Gates.judge``).  One that
        dropline stopped (STOPPED) is decided as a stop: nothing for the breaker,
        and a probe so ended is no probe."""
        if self.gates is None or item.pipeline is None or config is None:
            return False
        if stopped:
            self.gates.probe_lost(item.pipeline, item.id)
            return False
        return self.gates.judge(
            item.pipeline,
            running.stage,
            config,
            item.id,
            result,
            failing=FAILURE in item.metadata,
            mono=self.ctx.mono,
        )

    def _wait_for_release(
        self,
        result: StageResult,
        item: Item,
        running: Running,
        config: StageConfig | None,
        now: float,
    ) -> AttemptEnd:
        """The attempt ends "held": recorded, not counted; the file is ready again
        (its pipeline's gate keeps it waiting until a probe releases it, or a resume)."""
        took = result.duration or self.ctx.mono - running.started if result.began else 0.0
        ran = took if result.began else None  # one never begun did not run at all
        if self._ends is not None:
            self._ends.append(("held", result.error, ran, running.attempt_id))
        else:
            self.item_log.record_stage_end(running.attempt_id, "held", result.error, now, ran)
        self.ready.add(item, self.ctx.routes)
        return AttemptEnd(
            item.id,
            item.name,
            item.pipeline,
            running.stage,
            result,
            Decision("held", item.attempt),
            took,
            config.retries if config else 0,
        )

    def _start(self, jobs: list[Job], now: float) -> None:
        """Start JOBS; the first stages of a pipeline that skips duplicates are judged
        in the same commit (``duplicates.py``), and a duplicate ends unrun."""
        if not any(i == 0 and p.config.duplicates == "skip" for _, p, i, _ in jobs):
            self.attempts.start(jobs, now)
            return
        found = Screened()

        def judge(batch: list[Job]) -> set[str]:
            nonlocal found
            found = screen_duplicates(self.item_log, batch, now)
            return found.held

        self.attempts.start(jobs, now, judge)
        for item_id in found.held:
            item = self.items[item_id]
            if self.gates is not None and item.pipeline is not None:
                self.gates.probe_lost(item.pipeline, item_id)  # it did not start
        for item_id, first in found.duplicates.items():
            item = self.items[item_id]
            if self._still_held_open(item):
                continue  # a writer still at it: looked at again (and judged) later
            self.ctx.events.duplicate(item, first)
            pipeline = self.ctx.routes.get(item.pipeline)
            to = pipeline.config.duplicates_to if pipeline is not None else "archive"
            outcome = "failed" if to == "failed" else "archived"
            outside = pipeline.config.duplicates_folder if pipeline is not None else ""
            reason = f"duplicate of {first}"
            problem = self.spool.ends.outside_problem(outside, archive_day(now)) if outside else ""
            if problem:  # a symbolic link put in its place, say: failed/, with why
                outcome, outside = "failed", ""
                reason += f"; not put in {to}/: {problem}"
            self._finish(item, outcome, reason, None, outside)
        for item_id, first in found.waiting.items():
            item = self.items[item_id]
            item.next_at = now + DUPLICATE_WAIT
            heapq.heappush(self.retry_heap, (self.ctx.mono + DUPLICATE_WAIT, item_id))
            self.twins.setdefault(first, set()).add(item_id)

    def twins_ended(self, ended: list[str]) -> None:
        """The files that waited for one of ENDED, their twin, are judged at once."""
        woken: set[str] = set()
        for item_id in ended:
            woken |= self.twins.pop(item_id, set())
        if not woken:
            return
        mono = self.ctx.mono
        # Their one entry each is moved forward (never a second one: a file is made
        # ready once).
        self.retry_heap = [(mono if i in woken else due, i) for due, i in self.retry_heap]
        heapq.heapify(self.retry_heap)

    def _probes(self, free: int) -> list[Job]:
        """The probes due of held pipelines: one file each tries the held stage,
        past the closed gate (``gates.py``)."""
        jobs: list[Job] = []
        if self.gates is None:
            return jobs
        for pipeline, stage in self.gates.probes_due(self.ctx.mono):
            if len(jobs) >= free:
                break
            item_id = self.ready.take_probe(pipeline, functools.partial(self._probe_rank, stage))
            job = self._job_for(item_id) if item_id is not None else None
            if job is not None:
                self.gates.probing(pipeline, job[0].id)
                jobs.append(job)
        return jobs

    def _probe_rank(self, stage: str, item_id: str) -> int:
        """Which file probes STAGE: first one that failed at it already (its retry is
        due: a failure that came from the file's first try alone does not keep the
        pipeline held), then one at it, else any (it moves on towards it)."""
        item = self.items.get(item_id)
        pipeline = self.ctx.routes.get(item.pipeline) if item is not None else None
        found = pipeline.stage_at(item.next_stage) if pipeline and item else None
        if item is not None and FAILURE in item.metadata:
            return 3  # running its on_failure stages: never a probe
        if item is None or found is None or found.name != stage:
            return 2
        return 0 if item.attempt > 0 else 1


__all__ = ["FlowControl"]
