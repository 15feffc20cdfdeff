"""In which order a file's end is made durable: each step durable before the
next depends on it, with the crash point the tests kill the daemon at.

1. ``plan_finish``: a free destination in archive/ or failed/ for each file.
2. ``record_finish_intent``: rows "finishing" with their destinations;
   commit                                                    finish.intent_committed
3. ``write_reasons``: failed/NAME.error.json for each failure, then one
   fsync of failed/: a file in failed/ always has its reason   finish.error_written
4. the mover renames working/ -> archive/ or failed/            finish.renamed
   (``move_here`` instead, in this process, for a destination on another
   filesystem: copied, fsynced, renamed, the source removed)   finish.copied,
                                                               finish.copy_renamed
5. one fsync per folder touched; ``take_answers``            finish.synced
6. ``record_finished``: rows "archived", "failed" or "vanished";
   commit (in the loop, not fsync'd: a power loss that takes it
   back leaves step 2, which recovery confirms)             finish.committed

``finish_batch`` runs all six here, in order (recovery); the daemon's loop
runs them across two passes with the mover (``loop/transit.py``), and
``complete_here`` runs steps 4 to 6 here when the mover cannot.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from ..crashpoints import crashpoint
from ..errors import DiskFullError
from ..escaping import escape_text
from ..spool import Spool, archive_day, outside_of
from ..spool.mover import FinishMove, Ticket
from ..stamps import iso
from ..state import ItemLog
from .claim import Claimed


@dataclass
class Finish:
    """A file to move to its end.  final_name empty: not yet chosen."""

    item_id: str
    name: bytes
    working_name: bytes
    outcome: str  # "archived" or "failed"
    reason: str = ""
    pipeline: str | None = None
    stage: str | None = None
    attempts: int = 0
    sha256: str | None = None
    created_at: float = 0.0
    final_dir: str = ""
    final_name: bytes = b""
    # An archived file ends in this folder of the data folder instead of archive/
    # (a duplicate's ``duplicates_to``); "" : archive/ or failed/ by its outcome.
    outside: str = ""
    state: str = field(default="", init=False)  # how it ended: archived, failed, vanished
    # ("" when a full disk stopped it: still "finishing", tried again later)


def error_document(f: Finish, now: float) -> dict[str, Any]:
    """The content of failed/NAME.error.json."""
    return {
        "item_id": f.item_id,
        "name": escape_text(f.name),
        "pipeline": f.pipeline,
        "stage": f.stage,
        "attempts": f.attempts,
        "error": f.reason,
        "sha256": f.sha256,
        "claimed_at": iso(f.created_at) if f.created_at else None,
        "failed_at": iso(now),
    }


def _move_to_end(
    items: ItemLog, spool: Spool, f: Finish, day: str, now: float, *, taken: bool = False
) -> bool:
    """Move one file to its recorded destination; choose (and record) again if taken.

    TAKEN: the destination was found taken already (by the mover's rename).
    """
    taken_names: set[tuple[str, bytes]] = set()
    while True:
        if not taken:
            try:
                return spool.ends.finish(f.working_name, f.outcome, f.final_dir, f.final_name)
            except FileExistsError:
                pass
        taken = False
        # Someone put a file under the chosen name.  The new choice is recorded
        # (and, for a failure, its reason written and made durable) before the move.
        if f.outcome == "failed":
            spool.ends.remove_error(f.final_name)
        taken_names.add((f.final_dir, f.final_name))
        f.final_dir, f.final_name = spool.ends.choose_destination(
            f.outcome, f.name, f.item_id, day, taken_names, f.outside or outside_of(f.final_dir)
        )
        with items.db.transaction():
            items.mark_finishing_many(
                [(f.outcome, f.reason, f.final_dir, f.final_name, f.item_id)], now
            )
        if f.outcome == "failed":
            spool.ends.write_error(f.final_name, error_document(f, now))
            spool.sync()


@dataclass
class FinishBatch:
    """Files to move to their end: destinations chosen, recorded ("finishing"), moved."""

    finishes: list[Finish]
    day: str
    now: float
    fresh: list[Finish]  # those whose destination was chosen just now (not yet recorded)
    full: bool = False  # a full disk stopped the reasons: nothing is moved this time
    ticket: Ticket | None = None  # the mover's answer, once asked

    def moves(self, spool: Spool) -> list[FinishMove] | None:
        """The renames for the mover; None if one needs more than a rename (another
        filesystem): then the batch is moved here (``move_here``)."""
        folders: dict[tuple[str, str], str | None] = {}  # a batch has few destinations
        moves: list[FinishMove] = []
        for f in self.finishes:
            key = (f.outcome, f.final_dir)
            if key not in folders:
                folders[key] = spool.ends.rename_folder(*key)
            folder = folders[key]
            if folder is None:
                return None
            moves.append((f.working_name, folder, f.final_name))
        return moves


def plan_finish(spool: Spool, finishes: list[Finish], now: float) -> FinishBatch:
    """Choose a free destination for each file that has none yet."""
    batch = FinishBatch(
        finishes,
        archive_day(now),
        now,
        [f for f in finishes if not f.final_name],
    )
    taken: set[tuple[str, bytes]] = set()
    for f in batch.fresh:
        f.final_dir, f.final_name = spool.ends.choose_destination(
            f.outcome, f.name, f.item_id, batch.day, taken, f.outside
        )
        taken.add((f.final_dir, f.final_name))
    return batch


def record_finish_intent(
    items: ItemLog, batch: FinishBatch, claimed: dict[str, Claimed] | None = None
) -> None:
    """Rows "finishing" with their destinations (caller's transaction, committed
    before the reasons are written and before any move).

    CLAIMED: files whose claim is not recorded yet (``record_claimed``'s
    LATER); those finishing now are recorded with their claim and removed.
    """
    claimed = claimed if claimed is not None else {}
    plain: list[tuple[str, str, str, bytes, str]] = []
    with_claim: list[tuple[str | None, str, int, int, str, str, str, bytes, str]] = []
    for f in batch.fresh:
        c = claimed.pop(f.item_id, None)
        if c is None:
            plain.append((f.outcome, f.reason, f.final_dir, f.final_name, f.item_id))
        else:
            claim = (c.pipeline, c.sha256, c.size, c.ctime_ns)
            with_claim.append((*claim, f.outcome, f.reason, f.final_dir, f.final_name, f.item_id))
    items.mark_finishing_many(plain, batch.now)
    items.mark_claimed_finishing_many(with_claim, batch.now)


def write_reasons(spool: Spool, batch: FinishBatch) -> None:
    """Write failed/NAME.error.json for the failures, all durable (one fsync of
    failed/) before any file joins its reason: a file in failed/ always has its
    reason beside it."""
    for f in batch.finishes:
        if f.outcome == "failed" and not batch.full and spool.working.contains(f.working_name):
            try:
                spool.ends.write_error(f.final_name, error_document(f, batch.now))
            except DiskFullError:
                batch.full = True
                continue
            crashpoint("finish.error_written")
    spool.sync()


def move_here(items: ItemLog, spool: Spool, batch: FinishBatch) -> None:
    """Move the batch's files in this process (any filesystem), then fsync."""
    full = batch.full
    for f in batch.finishes:
        if full:
            continue
        try:
            moved = _move_to_end(items, spool, f, batch.day, batch.now)
        except DiskFullError:
            full = True
            continue
        if moved:
            f.state = f.outcome
            crashpoint("finish.renamed")
        else:
            _moved_before_or_vanished(spool, f)
    spool.sync()


def _moved_before_or_vanished(spool: Spool, f: Finish) -> None:
    if spool.ends.destination_exists(f.outcome, f.final_dir, f.final_name):
        f.state = f.outcome  # moved before a crash; recovery is completing it
    else:
        f.state = "vanished"


def take_answers(items: ItemLog, spool: Spool, batch: FinishBatch, answers: list[int]) -> None:
    """What the mover's renames did (``mover.finish``); a taken name is chosen again
    here (recorded in a transaction of its own: call outside any)."""
    again = False
    for f, err in zip(batch.finishes, answers, strict=True):
        if err == 0:
            f.state = f.outcome
        elif err == errno.ENOENT:
            _moved_before_or_vanished(spool, f)
        elif err == errno.EEXIST:
            # Someone put a file under the chosen name: choose, record, move here.
            if _move_to_end(items, spool, f, batch.day, batch.now, taken=True):
                f.state = f.outcome
            else:
                _moved_before_or_vanished(spool, f)
            again = True
        # A full disk (or a move not tried after it): still "finishing", tried later.
    if again:
        spool.sync()


def record_finished(items: ItemLog, batch: FinishBatch) -> None:
    """Rows "archived", "failed" or "vanished" for the files moved (caller's transaction)."""
    items.mark_finished_many([(f.state, f.item_id) for f in batch.finishes if f.state], batch.now)


def intent_committed() -> None:
    """Step 2 is durable: destinations recorded, nothing moved yet."""
    crashpoint("finish.intent_committed")


def synced() -> None:
    """Step 5 is done: the moves are durable, the rows still say "finishing"."""
    crashpoint("finish.synced")


def committed() -> None:
    """Step 6 is committed: the ends are recorded."""
    crashpoint("finish.committed")


def complete_here(items: ItemLog, spool: Spool, batch: FinishBatch) -> None:
    """Steps 4 to 6 in this process (the reasons written already)."""
    move_here(items, spool, batch)
    synced()
    with items.db.transaction():
        record_finished(items, batch)
    committed()


def finish_batch(items: ItemLog, spool: Spool, finishes: list[Finish], now: float) -> list[Finish]:
    """Move FINISHES to archive/ or failed/ in this process, each step durable before
    the next; returns them with ``state`` set.

    A full disk stops the moves: the files not moved keep ``state`` empty and
    stay recorded as "finishing" with their destination, for a later try.
    """
    if not finishes:
        return []
    batch = plan_finish(spool, finishes, now)
    if batch.fresh:
        with items.db.transaction():
            record_finish_intent(items, batch)
        intent_committed()
    write_reasons(spool, batch)
    complete_here(items, spool, batch)
    return finishes
