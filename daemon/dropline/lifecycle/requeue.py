"""``dropline retry``: a failed file goes back to working/ and through its pipeline again.

Each step is durable before the next depends on it, as in ``claim.py``:

requeue: rows "requeuing" with a free name in working/ -> commit
         rename failed/NAME -> working/ (each file); fsync both folders once
         remove failed/NAME.error.json; fsync failed/
         hash, route again; rows "active" from the first stage -> commit

The item keeps its id (the idempotency key its stages already saw), its claim
time and every earlier attempt; an event row says where it came back from and
why it had failed.  The file leaves failed/ before its reason does, so a file
in failed/ never lacks its NAME.error.json.  Recovery completes a "requeuing"
row the same way: back in working/ -> finish the step; still in failed/ ->
move it again; in neither -> vanished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..crashpoints import crashpoint
from ..escaping import escape_text
from ..pipeline import Routes
from ..spool import Refusal, Spool, free_working_name
from ..state import ItemLog, ItemRow
from .claim import Claimed


@dataclass
class RequeueResult:
    requeued: list[Claimed] = field(default_factory=list)  # back in working/, active
    refused: dict[str, str] = field(default_factory=dict)  # item id -> why not
    vanished: list[str] = field(default_factory=list)

    def answer(self, item_id: str) -> str:
        """What became of ITEM_ID, as `dropline retry` reports it."""
        if item_id in self.refused:
            return self.refused[item_id]
        if item_id in self.vanished:
            return "vanished from failed/"
        return "requeued"


def _why_not(row: ItemRow | None, spool: Spool) -> str:
    """Why this item cannot go back to working/ ("" when it can)."""
    if row is None:
        return "unknown item"
    if row.state != "failed":
        return f"it is {row.state}, not failed"
    if not row.final_name:
        return "no place in failed/ is recorded for it"
    found = spool.ends.failed_entry(row.final_name)
    if found is None:
        return f"failed/{escape_text(row.final_name)} is no longer there"
    if isinstance(found, Refusal):
        return f"failed/{escape_text(row.final_name)}: {found.reason}"
    return ""


def requeue_batch(
    items: ItemLog,
    spool: Spool,
    routes: Routes,
    item_ids: list[str],
    now: float,
    in_use: set[bytes],
) -> RequeueResult:
    """Send the failed ITEM_IDS through their pipelines again.

    IN_USE: the names in working/ now (only dropline writes there).
    """
    result = RequeueResult()
    plans: list[tuple[ItemRow, bytes]] = []
    taken = set(in_use)
    with items.db.transaction():
        for item_id in item_ids:
            row = items.item(item_id)
            why = _why_not(row, spool)
            if why:
                result.refused[item_id] = why
                continue
            assert row is not None and row.final_name is not None
            working_name = free_working_name(row.name, item_id, taken)
            taken.add(working_name)
            if not items.mark_requeuing(item_id, working_name, now):
                result.refused[item_id] = "it is no longer failed"
                continue
            # Its end is about to be reset: the earlier failure stays in its history.
            where = f"failed/{escape_text(row.final_name)}"
            failed_at = row.finished_at or now
            items.add_event(item_id, "failed", failed_at, f"to {where}: {row.reason}")
            items.add_event(item_id, "retry", now, f"back from {where}")
            row.working_name = working_name
            plans.append((row, working_name))
    crashpoint("retry.intent_committed")
    complete_requeue(items, spool, routes, [row for row, _ in plans], now, result)
    return result


def complete_requeue(
    items: ItemLog,
    spool: Spool,
    routes: Routes,
    rows: list[ItemRow],
    now: float,
    result: RequeueResult,
) -> None:
    """Move rows recorded as "requeuing" back to working/ and record them active."""
    if not rows:
        return
    moved: list[ItemRow] = []
    for row in rows:
        if spool.working.contains(row.working_name):
            moved.append(row)  # moved before a crash: recovery is completing it
        elif row.final_name and spool.ends.requeue(row.final_name, row.working_name):
            moved.append(row)
            crashpoint("retry.moved")
        else:
            result.vanished.append(row.id)
    spool.sync()
    for row in moved:
        if row.final_name:
            spool.ends.remove_error(row.final_name)
    spool.sync()
    crashpoint("retry.synced")
    with items.db.transaction():
        for row in moved:
            sha256, size, ctime_ns = spool.working.hash(row.working_name)
            pipeline = routes.route(row.name)
            name = pipeline.name if pipeline else None
            items.mark_requeued(row.id, name, sha256, size, ctime_ns, now)
            result.requeued.append(
                Claimed(
                    row.id, row.name, row.working_name, name, sha256, size, ctime_ns, row.created_at
                )
            )
        for item_id in result.vanished:
            items.mark_finished_many([("vanished", item_id)], now)
            items.add_event(item_id, "vanished", now, "missing from failed/ while retried")


__all__ = ["RequeueResult", "complete_requeue", "requeue_batch"]
