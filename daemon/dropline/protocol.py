"""The group-commit protocol: how a batch of files is claimed and finished durably.

Each step is made durable before the next depends on it:

claim:   record intent (rows "claiming")  -> commit
         rename incoming/NAME -> working/  (each file)
         fsync working/ and incoming/ once
         hash, verify, route; rows "active" -> commit
finish:  choose destinations; rows "finishing" -> commit
         write failed/NAME.error.json (fsynced), rename working/ -> archive/ or failed/
         fsync the touched folders once
         rows "archived" / "failed" -> commit

In the daemon the renames and fsyncs of a batch are done by the mover
process (``mover.py``) while the loop records another batch; the
steps of each batch stay in this order.  Recovery and a move to another
filesystem do them here.

A claim that cannot complete never strands its file:
- the rename finds the file gone (ENOENT: renamed or removed by its writer):
  its row is forgotten, the file is wherever its writer put it;
- the rename finds the working name taken (EEXIST: an entry dropline did not
  know of): the file stays in incoming/, its row is forgotten, the name is
  taken from then on and the file is claimed again under a unique working name;
- the file changed while it was read (its writer is still at work): it is put
  back as incoming/NAME and its row forgotten, claimed again once settled;
- it cannot be put back because NAME is taken again in incoming/ (its writer
  made a new file of that name meanwhile): it is an earlier delivery of NAME,
  so it is kept in working/ as its own item, its row still "claiming", and
  claimed there once it has settled (``holding.py``); a crash meanwhile leaves
  a claim that recovery completes.  Nothing is discarded and nothing is
  overwritten;
- an entry swapped for something else than a regular file during the claim
  goes back into incoming/ (under a unique name if NAME is taken) and is refused.

A crash between any two steps leaves a state that recovery completes or
undoes (``recovery.py``).  One transaction and one fsync per folder per batch,
never per file.  A full filesystem stops a batch where it is: the files not
yet moved stay where they were, recorded as such, to be tried again.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .crashpoints import crashpoint
from .errors import DiskFullError
from .ids import new_item_id
from .log import escape_text
from .pipeline import Routes
from .spool import (
    FULL_ERRNOS,
    Entry,
    HeldOpenError,
    KeptByRuleError,
    Refusal,
    Spool,
    free_working_name,
)
from .spool.mover import ClaimMove, FinishMove, Ticket
from .state import ItemLog


@dataclass
class Claimed:
    """A file now in working/, recorded as active."""

    item_id: str
    name: bytes
    working_name: bytes
    pipeline: str | None
    sha256: str
    size: int
    ctime_ns: int
    created_at: float


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
    state: str = field(default="", init=False)  # how it ended: archived, failed, vanished
    # ("" when a full disk stopped it: still "finishing", tried again later)


@dataclass
class Held:
    """A file claimed while still being written that could not be put back (its
    name was taken again in incoming/): kept in working/, its row "claiming",
    claimed there once it has settled."""

    item_id: str
    name: bytes
    working_name: bytes
    created_at: float
    source: tuple[int, int] = (0, 0)  # (dev, ino) when another file than was checked


@dataclass
class ClaimResult:
    """What a claim batch did."""

    claimed: list[Claimed] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    busy: list[bytes] = field(default_factory=list)  # still being written: put back
    # Held open for writing (the lease probe at the hash): put back, logged as such.
    held_open: list[Entry] = field(default_factory=list)
    # A rule says wait (a database with its journal beside it): put back, and why.
    kept_by_rule: list[tuple[Entry, object]] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)  # still being written, and NAME taken again
    gone: list[str] = field(default_factory=list)  # item ids not claimed: rows to forget
    lost: list[bytes] = field(default_factory=list)  # gone from incoming/ before the rename
    # (name, working name): the working name was taken by an entry nobody knew of;
    # the file is still in incoming/.
    taken: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Working names of entries left in working/ (not regular files, disk full): taken.
    stranded: list[bytes] = field(default_factory=list)
    full: DiskFullError | None = None  # the disk-full error that stopped the batch


@dataclass
class ClaimBatch:
    """A batch of claims: planned, then recorded ("claiming"), then moved."""

    plans: list[tuple[str, Entry, bytes]]  # (item id, the entry in incoming/, working name)
    now: float
    ticket: Ticket | None = None  # the mover's answer, once asked

    @property
    def moves(self) -> list[ClaimMove]:
        return [(entry.name, working_name) for _, entry, working_name in self.plans]

    @property
    def working_names(self) -> set[bytes]:
        return {working_name for _, _, working_name in self.plans}


def plan_claim(spool: Spool, entries: list[Entry], now: float, in_use: set[bytes]) -> ClaimBatch:
    """An item id and a free working name for each of ENTRIES (checked regular
    files in incoming/).  IN_USE: the names taken in working/ now (only
    dropline writes there)."""
    plans: list[tuple[str, Entry, bytes]] = []
    taken = set(in_use)
    for entry in entries:
        item_id = new_item_id(now)
        working_name = free_working_name(entry.name, item_id, taken)
        taken.add(working_name)
        plans.append((item_id, entry, working_name))
    return ClaimBatch(plans, now)


def record_claim_intent(items: ItemLog, batch: ClaimBatch) -> None:
    """Rows "claiming" (in the caller's transaction, committed before any move)."""
    items.insert_claiming_many(
        [(item_id, e.name, working_name, e.dev, e.ino) for item_id, e, working_name in batch.plans],
        batch.now,
    )


def judge_claim(spool: Spool, routes: Routes, batch: ClaimBatch, answers: list[int]) -> ClaimResult:
    """What the moves did (``mover.claim``: renamed and fsynced, an errno per file):
    the files now in working/ read, hashed and routed, the others given back
    or forgotten."""
    result = ClaimResult()
    claimed, refused, gone = result.claimed, result.refused, result.gone
    moved: list[tuple[str, Entry, bytes]] = []
    for plan, err in zip(batch.plans, answers, strict=True):
        if err == 0:
            moved.append(plan)
            continue
        item_id, entry, working_name = plan
        if err in FULL_ERRNOS and result.full is None:
            result.full = DiskFullError(f"claim of {entry.name!r}: {os.strerror(err)}")
        elif err == errno.ENOENT:
            result.lost.append(entry.name)  # renamed or removed by its writer: a lost race
        elif err == errno.EEXIST:
            result.taken.append((entry.name, working_name))
        gone.append(item_id)  # gone, or not tried: still in incoming/, claimed later
    crashpoint("claim.synced")

    for item_id, entry, working_name in moved:
        try:
            sha256, size, ctime_ns = spool.working.hash(working_name, expect=entry, judge=True)
        except ValueError as exc:
            _not_claimed(spool, result, item_id, entry, working_name, exc, batch.now)
            continue
        pipeline = routes.route(entry.name)
        claimed.append(
            Claimed(
                item_id,
                entry.name,
                working_name,
                pipeline.name if pipeline else None,
                sha256,
                size,
                ctime_ns,
                batch.now,
            )
        )
    if refused or result.busy or result.held_open or result.kept_by_rule:
        spool.sync()
    return result


def _not_claimed(
    spool: Spool,
    result: ClaimResult,
    item_id: str,
    entry: Entry,
    working_name: bytes,
    exc: ValueError,
    now: float,
) -> None:
    """A file renamed into working/ that cannot be claimed as it is: back to
    incoming/, or kept in working/ as its own item (see the module docstring)."""
    seen = spool.working.entry(working_name)
    if seen is None:
        # Removed from working/ behind dropline's back: nothing left to keep.
        result.lost.append(entry.name)
        result.gone.append(item_id)
        return
    if isinstance(seen, Entry):
        # Its writer is still at work (ChangedError), or the name was given to
        # another file between the look and the rename: a delivery all the same.
        # Back to incoming/, claimed once it is done; if NAME is taken again
        # there, it is an earlier delivery of NAME: kept as its own item.
        if spool.working.unclaim(working_name, entry.name):
            if isinstance(exc, HeldOpenError):
                result.held_open.append(entry)
            elif isinstance(exc, KeptByRuleError):
                result.kept_by_rule.append((entry, exc.why))
            else:
                result.busy.append(entry.name)
            result.gone.append(item_id)
        else:
            other = (seen.dev, seen.ino) != (entry.dev, entry.ino)
            source = (seen.dev, seen.ino) if other else (0, 0)
            result.held.append(Held(item_id, entry.name, working_name, now, source))
            crashpoint("claim.held")
        return
    # Something else than a regular file was swapped in: never processed; back
    # where it came from (under a unique name if NAME is taken) and refused.
    back = spool.working.unclaim_somewhere(working_name, entry.name, item_id)
    result.gone.append(item_id)
    if back is None:
        result.stranded.append(working_name)
        result.refused.append(Refusal(working_name, f"left in working/: {exc}", 0, 0, seen.kind))
        return
    reason = f"changed while being claimed: {exc}"
    result.refused.append(Refusal(back, reason, seen.dev, seen.ino, seen.kind))


def record_claimed(
    items: ItemLog, batch: ClaimBatch, result: ClaimResult, later: Collection[str] = ()
) -> None:
    """Rows "active" for the files claimed, the others' rows deleted (caller's transaction).

    LATER: files recorded with their finish intent instead (``record_finish_intent``),
    in the same pass: a file with no stage to run goes from "claiming" straight
    to "finishing", one row write fewer.  Until then its row says "claiming"
    and recovery would complete the claim, as after a crash before this step.
    """
    for item_id in result.gone:
        items.delete_item(item_id)
    for held in result.held:
        if held.source != (0, 0):  # recovery completes a claim of this inode only
            items.set_claim_source(held.item_id, *held.source, batch.now)
    record_active(items, [c for c in result.claimed if c.item_id not in later], batch.now)


def record_active(items: ItemLog, claimed: list[Claimed], now: float) -> None:
    """Rows "active" for CLAIMED (caller's transaction)."""
    items.mark_active_many(
        [(c.pipeline, c.sha256, c.size, c.ctime_ns, c.item_id) for c in claimed], now
    )


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
        "claimed_at": _iso(f.created_at) if f.created_at else None,
        "failed_at": _iso(now),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


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
            f.outcome, f.name, f.item_id, day, taken_names
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
        time.strftime("%Y-%m-%d", time.localtime(now)),
        now,
        [f for f in finishes if not f.final_name],
    )
    taken: set[tuple[str, bytes]] = set()
    for f in batch.fresh:
        f.final_dir, f.final_name = spool.ends.choose_destination(
            f.outcome, f.name, f.item_id, batch.day, taken
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
        crashpoint("finish.intent_committed")
    write_reasons(spool, batch)
    move_here(items, spool, batch)
    crashpoint("finish.synced")
    with items.db.transaction():
        record_finished(items, batch)
    crashpoint("finish.committed")
    return finishes
