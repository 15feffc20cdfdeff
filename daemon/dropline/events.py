"""What happened to files, told once and fanned out: to the log (the journal),
the metrics and the counters that STATUS= and ``daemon.stopped`` show.

The loop calls one method per transition; each says in one place which log
event, which metric and which counter it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from .lifecycle.claim import Claimed
from .lifecycle.decide import Decision
from .lifecycle.finish import Finish
from .log import FileLog
from .metrics import MetricsSink
from .spool import Refusal
from .workers import StageResult


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How a stage attempt ended, and what that means (``lifecycle/decide.py``)."""

    item: str
    file: bytes
    pipeline: str | None
    stage: str
    result: StageResult
    decision: Decision
    seconds: float  # how long it ran (0 when abandoned)
    retries: int  # the stage's retries, as configured


class FileEvents:
    """The observers of the loop's transitions."""

    def __init__(self, log: Any, metrics: MetricsSink) -> None:
        self.log = log
        self.file_log = FileLog(log)  # the events of every file, at full speed
        self.metrics = metrics
        self.counts = {"archived": 0, "failed": 0}

    def claimed(self, c: Claimed) -> None:
        self.file_log.info(
            "file.claimed", item=c.item_id, file=c.name, pipeline=c.pipeline, size=c.size
        )

    def requeued(self, c: Claimed) -> None:
        """Back from failed/ (``dropline retry``): no longer counted as failed."""
        self.counts["failed"] = max(0, self.counts["failed"] - 1)
        self.log.info("file.requeued", item=c.item_id, file=c.name, pipeline=c.pipeline)

    def replayed(self, c: Claimed, replay_of: str, from_stage: str) -> None:
        """A copy of an archived file in working/ as a new item (``dropline replay``);
        FROM_STAGE: the stage it starts at, "" for the first."""
        fields = {"from_stage": from_stage} if from_stage else {}
        self.log.info(
            "file.replayed",
            item=c.item_id,
            file=c.name,
            pipeline=c.pipeline,
            replay_of=replay_of,
            **fields,
        )

    def duplicate(self, item: Any, first: str) -> None:
        """ITEM's content is the earlier item FIRST's: it ends unrun (duplicates: skip)."""
        self.file_log.info(
            "file.duplicate", item=item.id, file=item.name, pipeline=item.pipeline, first=first
        )

    def refused(self, refusal: Refusal) -> None:
        self.log.warning("entry.refused", file=refusal.name, reason=refusal.reason)
        self.metrics.entry_refused(refusal.kind)

    def stage_started(self, item: str, file: Any, pipeline: str, stage: str, attempt: int) -> None:
        self.file_log.info(
            "stage.started", item=item, file=file, pipeline=pipeline, stage=stage, attempt=attempt
        )

    def attempt_ended(self, end: AttemptEnd) -> None:
        """An attempt's end, recorded: what it means, in the log and the metrics."""
        d, result, pipeline = end.decision, end.result, end.pipeline or "none"
        stopped = d.verdict in ("interrupted", "indeterminate")
        outcome = "interrupted" if stopped else "held" if d.verdict == "held" else result.outcome
        self.metrics.stage_ended(pipeline, end.stage, outcome, end.seconds)
        # The fields in the order a logger bound to them would write them.
        its = {"item": end.item, "file": end.file, "pipeline": end.pipeline, "stage": end.stage}
        log = self.file_log
        if d.verdict == "next":
            # The time the history shows too (the attempt's row keeps it).
            log.info("stage.succeeded", **its, seconds=round(end.seconds, 3))
        elif d.verdict == "interrupted":
            log.info("stage.interrupted", **its, error=result.error)
        elif d.verdict == "held" and not result.began:  # its pipeline paused: never ran
            log.info("stage.held", **its, error=result.error)
        elif d.verdict == "held":
            log.warning("stage.held", **its, error=result.error)
        elif d.verdict == "indeterminate":
            log.error("stage.failed", **its, error=d.reason)
        elif d.verdict == "retry":
            self.metrics.retry_scheduled(pipeline, end.stage)
            log.warning(
                "stage.retrying",
                **its,
                attempt=d.failures,
                of=end.retries + 1,
                delay=round(d.delay, 3),
                error=result.error,
            )
        else:
            log.error("stage.failed", **its, attempt=d.failures, error=result.error, kind=d.kind)

    def finished(self, f: Finish) -> None:
        """At its end: archived, failed, or vanished from working/."""
        where = os.path.join(f.final_dir, os.fsdecode(f.final_name))
        self.metrics.file_finished(f.pipeline, f.state, time.time() - f.created_at)
        if f.state == "archived":
            self.counts["archived"] += 1
            self.file_log.info(
                "file.archived", item=f.item_id, file=f.name, pipeline=f.pipeline, to=where
            )
        elif f.state == "failed":
            self.counts["failed"] += 1
            self.file_log.error(
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
