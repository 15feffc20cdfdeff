"""``dropline prune``: delete finished files and their history beyond retention.

Safe beside a running daemon, in small batches so that it is never blocked
for long (each batch is one short transaction; the daemon's own writes wait
at most that long):

    rows "pruning" (only rows still archived/failed/vanished) -> commit
    delete the files (archive/DAY/NAME; failed/NAME and NAME.error.json)
    delete the rows, their attempts and events -> commit

Marking first means a failed file being pruned cannot be retried at the same
time (retry takes only "failed" rows), and a crash in between leaves rows
that the next prune finishes.  The files go before their rows: a crash never
leaves a file that no row names, which no later prune would find.  Deleted
rows free pages that SQLite reuses, so the database stops growing once the
retention is reached; a checkpoint at the end folds the WAL back in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spool import Spool, archive_day
from ..state import Pruning

BATCH = 500  # rows per transaction: a few milliseconds of the daemon's time


@dataclass
class PruneReport:
    """What prune deleted (or, dry, would delete)."""

    archived: int = 0
    failed: int = 0
    vanished: int = 0
    bytes: int = 0
    days_removed: int = 0
    requests: int = 0


def targets(include_failed: bool) -> tuple[str, ...]:
    """The states whose rows (and files) go: failed ones only when asked."""
    return ("archived", "vanished", "failed") if include_failed else ("archived", "vanished")


def _count(report: PruneReport, outcome: str, size: int) -> None:
    if outcome == "archived":
        report.archived += 1
    elif outcome == "failed":
        report.failed += 1
    else:
        report.vanished += 1
    report.bytes += size


def plan(pruning: Pruning, before: float, include_failed: bool) -> PruneReport:
    """What a prune would delete, without deleting anything."""
    report = PruneReport()
    for outcome, count, size in pruning.prunable(targets(include_failed), before):
        setattr(report, outcome, count)
        report.bytes += size if outcome != "vanished" else 0
    return report


def prune(
    pruning: Pruning,
    spool: Spool,
    before: float,
    include_failed: bool,
    now: float,
    outside: tuple[str, ...] = (),
) -> PruneReport:
    """Delete files finished before BEFORE, with their rows; see the module docstring.
    OUTSIDE: the folders named for duplicates (their empty date folders go too)."""
    report = PruneReport()
    states = targets(include_failed)
    # Rows left "pruning" by an interrupted run first, then batch after batch.
    _delete_marked(pruning, spool, report)
    while True:
        item_ids = pruning.select_for_pruning(states, before, BATCH)
        if not item_ids:
            break
        with pruning.db.transaction():
            pruning.mark_pruning(item_ids, states)
        _delete_marked(pruning, spool, report)
    with pruning.db.transaction():
        report.requests = pruning.delete_old_requests(before)
    day = archive_day(min(before, now - 2 * 86400))
    report.days_removed = len(spool.ends.remove_empty_days(day, outside))
    spool.sync()
    pruning.db.checkpoint()
    return report


def _delete_marked(pruning: Pruning, spool: Spool, report: PruneReport) -> None:
    while True:
        rows = pruning.pruning_items(BATCH)
        if not rows:
            return
        for _, outcome, final_dir, final_name in rows:
            size = 0
            if final_name and outcome in ("archived", "failed"):
                size = spool.ends.remove_final(outcome, final_dir or "", final_name)
            _count(report, outcome, size)
        spool.sync()
        with pruning.db.transaction():
            pruning.delete_pruned([row[0] for row in rows])


__all__ = ["PruneReport", "plan", "prune", "targets"]
