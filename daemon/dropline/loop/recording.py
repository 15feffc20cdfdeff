"""Recording how each stage attempt ended, and what it means for its file.

The scheduler's side that writes: the results of a pass are recorded in one
transaction (durable only where a lost record would matter), each judged by
``lifecycle/decide.py``: the next stage, a retry after a delay, the file's
``on_failure`` stages, or its end, which goes to ``finishes`` for the transit.

A file that fails runs its pipeline's ``on_failure`` stages first, if any:
its failure is kept in its metadata (FAILURE), and its next stage index
goes on past the ordinary stages (``Pipeline.stage_at``).
"""

from __future__ import annotations

import heapq
from typing import Any

from ..config import StageConfig
from ..crashpoints import crashpoint
from ..events import AttemptEnd
from ..isolation import WITHHELD
from ..lifecycle.decide import decide
from ..lifecycle.finish import Finish
from ..stages import FAILURE
from ..workers import StageResult
from .flow import FlowControl
from .items import Item, Running


class Recording(FlowControl):
    """How attempts ended, recorded and decided; the files' ends, decided."""

    results: list[tuple[StageResult, Item, Running]]
    finishes: list[Finish]
    _progress: list[tuple[int, dict[str, Any], str]] | None

    def _commit_results(self, now: float) -> None:
        pending, self.results = self.results, []
        # The attempts' ends and the files' next stages are written together at
        # the end of the transaction, one statement for many files.
        self._ends, self._progress = [], []
        try:
            with self.item_log.db.transaction(durable=self._must_be_durable(pending)):
                ends = [self._record(result, item, run, now) for result, item, run in pending]
                self.item_log.record_stage_ends(self._ends, now)
                self.item_log.set_progress_many(self._progress, now)
        finally:
            self._ends, self._progress = None, None
        crashpoint("stage.result_committed")
        if self.gates is not None:
            self.gates.tell()  # a hold or a release, told once committed
        # Told once committed: the journal never reports a step the database lacks.
        for end in ends:
            self.ctx.events.attempt_ended(end)

    def _must_be_durable(self, pending: list[tuple[StageResult, Item, Running]]) -> bool:
        """Whether these results need an fsync'd commit.

        Not when each is a success of an idempotent stage that leaves the file
        as it was: a power loss that takes such a record back makes the stage
        run again, which it allows.  A failure (its retry count and time must
        survive), a non-idempotent stage (a lost end would fail its file as
        indeterminate) or a stage that rewrote the file (its new fingerprint)
        is committed durably, and so is everything committed with it.
        """
        for result, item, running in pending:
            if result.outcome != "succeeded":
                return True
            config = self._stage_config(item, running)
            if config is None or not config.idempotent or config.modifies:
                return True
        return False

    def _stage_config(self, item: Item, running: Running) -> StageConfig | None:
        """The configuration of the stage RUNNING ran (None: gone by a reload)."""
        pipeline = self.ctx.routes.get(item.pipeline)
        stage = pipeline.stage_at(running.stage_index) if pipeline else None
        return stage.config if stage else None

    def _record(self, result: StageResult, item: Item, running: Running, now: float) -> AttemptEnd:
        """Record how an attempt ended and what it means (``decide``)."""
        rows = self.item_log
        stage_cfg = self._stage_config(item, running)
        stopped = self.ctx.stopping and (running.cancel.is_set() or not result.began)
        if not result.began and result.error == WITHHELD:
            # Paused after it was handed out: not begun, it waits with the others (a
            # stop meanwhile too: it never ran, so it runs after the restart).
            if self.gates is not None and item.pipeline is not None:
                self.gates.probe_lost(item.pipeline, item.id)  # (a probe is no probe then)
            return self._wait_for_release(result, item, running, stage_cfg, now)
        if self._held_back(result, item, running, stage_cfg, stopped):
            return self._wait_for_release(result, item, running, stage_cfg, now)
        d = decide(
            result.outcome,
            result.error,
            stage=running.stage,
            config=stage_cfg,
            failures=item.attempt,
            stopped=stopped,
            failing=FAILURE in item.metadata,
        )
        end = AttemptEnd(
            item.id,
            item.name,
            item.pipeline,
            running.stage,
            result,
            d,
            result.duration or self.ctx.mono - running.started,  # 0 when abandoned
            stage_cfg.retries if stage_cfg else 0,
        )
        error = {"next": "", "indeterminate": d.reason}.get(d.verdict, result.error)
        took = end.seconds if result.began else None  # the log rounds the same value
        if self._ends is not None:
            self._ends.append((d.attempt_outcome, error, took, running.attempt_id))
        else:
            rows.record_stage_end(running.attempt_id, d.attempt_outcome, error, now, took)
        if d.verdict == "next":
            item.metadata.update(result.metadata)
            self._next_stage(item, running.stage_index + 1, now)
            if stage_cfg and stage_cfg.modifies:  # (a stat per stage only where it may change)
                seen = self.spool.working.fingerprint(item.working_name)
                if seen is not None and seen != item.fingerprint:
                    item.fingerprint = seen  # the stage rewrote it, as it declares it may
                    rows.set_fingerprint(item.id, seen[0], seen[1], now)
        elif d.verdict == "interrupted":
            pass  # we stopped it: not the stage's failure; it runs again after the restart
        elif d.verdict == "retry":
            item.attempt = d.failures
            item.next_at = now + d.delay
            rows.set_progress(
                item.id, item.next_stage, d.failures, item.next_at, item.metadata, now
            )
            heapq.heappush(self.retry_heap, (self.ctx.mono + d.delay, item.id))
        elif d.verdict == "go_on":
            # An on_failure stage failed: recorded and told; the file's outcome
            # (failed, for its own reason) stands, and the next one runs.
            item.attempt = d.failures
            self._next_stage(item, running.stage_index + 1, now)
        else:  # fail, indeterminate (a stop: no on_failure stages then)
            item.attempt = d.failures
            self._fail(item, d.reason, running.stage, now, stopping=d.verdict == "indeterminate")
        return end

    def _next_stage(self, item: Item, index: int, now: float) -> None:
        """ITEM goes on to stage INDEX, at once (caller's transaction)."""
        item.next_stage = index
        item.attempt = 0
        item.next_at = None
        if self._progress is not None:  # (recording results: written with the others)
            self._progress.append((index, item.metadata, item.id))
        else:
            self.item_log.set_progress(item.id, index, 0, None, item.metadata, now)
        self.ready.add(item, self.ctx.routes)

    # --- ends -----------------------------------------------------------------

    def _fail(
        self, item: Item, reason: str, stage: str | None, now: float, *, stopping: bool = False
    ) -> None:
        """The file failed: its pipeline's on_failure stages first, if any, then failed/.

        The failure is recorded in the item's metadata (FAILURE), which the
        on_failure stages read and a restart resumes from.
        """
        pipeline = self.ctx.routes.get(item.pipeline)
        earlier = item.metadata.get(FAILURE)
        if isinstance(earlier, dict):  # failed again while notifying: the first reason stands
            self._finish_failure(item, earlier)
            return
        if pipeline is None or not pipeline.on_failure or stopping:
            self._finish(item, "failed", reason, stage)
            return
        item.metadata[FAILURE] = {"stage": stage, "reason": reason, "attempts": item.attempt}
        with self.item_log.db.joined():  # (a pass recording its results, or its own)
            self._next_stage(item, len(pipeline.stages), now)

    def _finish_failure(self, item: Item, failure: dict[str, Any]) -> None:
        """To failed/ for the reason recorded when it failed (after its on_failure stages)."""
        attempts = failure.get("attempts")
        item.attempt = attempts if isinstance(attempts, int) else item.attempt
        stage = failure.get("stage")
        self._finish(item, "failed", str(failure.get("reason")), stage or None)

    def _finish(
        self, item: Item, outcome: str, reason: str, stage: str | None, outside: str = ""
    ) -> None:
        self.finishes.append(
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
                outside=outside,
            )
        )


__all__ = ["Recording"]
