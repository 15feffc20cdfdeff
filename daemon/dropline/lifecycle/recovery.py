"""Start-up recovery: reconcile working/ with the state database after any stop.

The folders are the truth.  For each unfinished row:
- "claiming": the rename happened if working/ holds the same inode: complete
  the claim (fsync, hash, route, "active"); otherwise forget the row (the file,
  if any, is still in incoming/ and will be claimed again);
- "active": a stage recorded as started but never ended was interrupted: an
  idempotent stage runs again, a non-idempotent one fails the file as
  "indeterminate"; a file missing from working/ is recorded as vanished;
- "finishing": the destination was recorded, so the move is redone or, if it
  happened, confirmed;
- "requeuing" (``dropline retry``): the move back from failed/ is completed
  (``requeue.py``).
- "replaying" (``dropline replay``): the copy from archive/ is completed
  (``replay.py``).
A file in working/ that no row knows (copied there by hand) is adopted, but
for a stage's temporary (``.dropline-tmp-*``), which is removed; one whose
"claiming" row was forgotten because it is another file than the one that
row names (swapped during the claim) is adopted under the name of that row:
nothing is left in working/ that no row knows.
Running recovery twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..crashpoints import crashpoint
from ..ids import new_item_id
from ..pipeline import Routes
from ..spool import WORKING_TEMP_PREFIX, Entry, Spool
from ..stages import FAILURE
from ..state import ItemLog, ItemRow, ReplayRows
from .decide import interrupted
from .finish import Finish, finish_batch
from .replay import ReplayResult, complete_replay
from .requeue import RequeueResult, complete_requeue


@dataclass
class RecoveryReport:
    """What recovery did, for the log."""

    claims_completed: int = 0
    claims_forgotten: int = 0
    adopted: int = 0
    interrupted: int = 0
    finished: list[Finish] = field(default_factory=list)
    vanished: int = 0
    requeued: int = 0
    replayed: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.claims_completed
            or self.claims_forgotten
            or self.adopted
            or self.interrupted
            or self.finished
            or self.vanished
            or self.requeued
            or self.replayed
        )


def finish_for(row: ItemRow, outcome: str, reason: str, stage: str | None) -> Finish:
    """The Finish of an item as the database records it (destination kept if chosen)."""
    return Finish(
        item_id=row.id,
        name=row.name,
        working_name=row.working_name,
        outcome=outcome,
        reason=reason,
        pipeline=row.pipeline,
        stage=stage,
        attempts=row.attempt,
        sha256=row.sha256,
        created_at=row.created_at,
        final_dir=row.final_dir or "",
        final_name=row.final_name or b"",
    )


def recover(items: ItemLog, spool: Spool, routes: Routes, now: float, log: Any) -> RecoveryReport:
    """Bring folders and database into agreement; see the module docstring."""
    report = RecoveryReport()
    rows = items.unfinished_items()
    # Working names of claims forgotten below: a file there is adopted under its name.
    forgotten_as: dict[bytes, bytes] = {}

    # Claims: the rename may or may not have happened; working/ says which.
    claiming = [row for row in rows if row.state == "claiming"]
    if claiming:
        spool.sync_all()  # a rename that happened must be durable before it is recorded
        completed: list[tuple[ItemRow, str, int, int, str | None]] = []
        forgotten: list[ItemRow] = []
        for row in claiming:
            seen = spool.working.entry(row.working_name)
            if isinstance(seen, Entry) and (seen.dev, seen.ino) == (row.src_dev, row.src_ino):
                sha256, size, ctime_ns = spool.working.hash(row.working_name)
                pipeline = routes.route(row.name)
                route = pipeline.name if pipeline else None
                completed.append((row, sha256, size, ctime_ns, route))
            else:
                forgotten.append(row)
        crashpoint("recovery.repaired")
        with items.db.transaction():
            for row, sha256, size, ctime_ns, pipeline_name in completed:
                items.mark_active_many([(pipeline_name, sha256, size, ctime_ns, row.id)], now)
                items.add_event(row.id, "claimed", now, "completed by recovery")
            for row in forgotten:
                items.delete_item(row.id)
        report.claims_completed = len(completed)
        report.claims_forgotten = len(forgotten)
        forgotten_as = {row.working_name: row.name for row in forgotten}
    known = {row.working_name for row in rows} - set(forgotten_as)

    # Retries interrupted on their way back from failed/.
    requeuing = [row for row in rows if row.state == "requeuing"]
    if requeuing:
        requeue_result = RequeueResult()
        complete_requeue(items, spool, routes, requeuing, now, requeue_result)
        report.requeued = len(requeue_result.requeued)
        for c in requeue_result.requeued:
            log.info(
                "file.requeued",
                item=c.item_id,
                file=c.name,
                pipeline=c.pipeline,
                detail="completed by recovery",
            )
        for item_id in requeue_result.vanished:
            log.error("file.vanished", item=item_id, detail="missing from failed/ and working/")
        report.vanished += len(requeue_result.vanished)

    # Replays interrupted before their copy was recorded in working/.
    replaying = [row for row in rows if row.state == "replaying"]
    if replaying:
        replay_result = ReplayResult()
        complete_replay(items, spool, replaying, now, replay_result)
        report.replayed = len(replay_result.replayed)
        replays = ReplayRows(items.db)
        for r in replay_result.replayed:
            c = r.claimed
            log.info(
                "file.replayed",
                item=c.item_id,
                file=c.name,
                pipeline=c.pipeline,
                replay_of=replays.replay_of(c.item_id) or "",
                detail="completed by recovery",
            )
        for item_id in replay_result.abandoned:
            log.warning("replay.abandoned", item=item_id, reason=replay_result.lost[item_id])
        for item_id in replay_result.vanished:
            log.error("file.vanished", item=item_id, detail=replay_result.lost[item_id])
        report.vanished += len(replay_result.vanished)

    # Files in working/ that no row knows.
    adopted: list[tuple[str, bytes, bytes, str, int, int, str | None]] = []
    for name in spool.working.names():
        if name in known:
            continue
        if name.startswith(WORKING_TEMP_PREFIX):
            spool.working.remove_temp(name)  # a stage's temporary, interrupted
            continue
        seen = spool.working.entry(name)
        if not isinstance(seen, Entry):
            log.warning("recovery.skipped", file=name, reason=seen.reason if seen else "gone")
            continue
        sha256, size, ctime_ns = spool.working.hash(name)
        dropped_as = forgotten_as.get(name, name)
        pipeline = routes.route(dropped_as)
        route = pipeline.name if pipeline else None
        adopted.append((new_item_id(now), dropped_as, name, sha256, size, ctime_ns, route))
    if adopted:
        with items.db.transaction():
            for item_id, name, working_name, sha256, size, ctime_ns, pipeline_name in adopted:
                items.insert_claiming_many([(item_id, name, working_name, 0, 0)], now)
                items.mark_active_many([(pipeline_name, sha256, size, ctime_ns, item_id)], now)
                items.add_event(item_id, "claimed", now, "adopted from working/ by recovery")
        report.adopted = len(adopted)

    # Active files: interrupted stages, vanished files.
    finishes: list[Finish] = []
    stopped: list[int] = []  # attempts interrupted, to run again
    vanished: list[ItemRow] = []
    for row in items.unfinished_items():
        if row.state == "finishing":
            finishes.append(finish_for(row, row.outcome or "failed", row.reason or "", None))
            continue
        if row.state != "active":
            continue
        if spool.working.entry(row.working_name) is None:
            vanished.append(row)
            continue
        pipeline = routes.get(row.pipeline)
        for attempt in items.open_attempts(row.id):
            stage = pipeline.stage_at(attempt.stage_index) if pipeline else None
            decision = interrupted(attempt.stage, stage.config if stage else None, row.attempt)
            if decision.verdict == "indeterminate":
                reason = decision.reason
                with items.db.transaction():
                    items.record_stage_end(attempt.id, decision.attempt_outcome, reason, now)
                failure = row.metadata.get(FAILURE)
                if isinstance(failure, dict):  # an on_failure stage: it had failed already
                    reason = f"{failure.get('reason')} (then {reason})"
                finish = finish_for(row, "failed", reason, attempt.stage)
                finish.attempts = attempt.attempt  # the interrupted attempt counts
                finishes.append(finish)
                break
            stopped.append(attempt.id)
    if stopped or vanished:
        with items.db.transaction():
            for attempt_id in stopped:
                items.record_stage_end(attempt_id, "interrupted", "interrupted by a stop", now)
            for row in vanished:
                items.mark_finished_many([("vanished", row.id)], now)
                items.add_event(row.id, "vanished", now, "missing from working/ at start-up")
                log.error("file.vanished", item=row.id, file=row.name)
    report.interrupted = len(stopped)
    report.vanished += len(vanished)
    report.finished = finish_batch(items, spool, finishes, now)
    return report


def describe(report: RecoveryReport) -> dict[str, int]:
    """The report as log fields."""
    return {
        "claims_completed": report.claims_completed,
        "claims_forgotten": report.claims_forgotten,
        "adopted": report.adopted,
        "interrupted": report.interrupted,
        "finished": len(report.finished),
        "vanished": report.vanished,
        "requeued": report.requeued,
        "replayed": report.replayed,
    }


__all__ = ["RecoveryReport", "describe", "recover"]
