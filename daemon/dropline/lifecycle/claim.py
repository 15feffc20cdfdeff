"""In which order a claim is made durable: each step durable before the next
depends on it, with the crash point the tests kill the daemon at.

1. ``plan_claim``: an item id and a free working name for each file.
2. ``record_claim_intent``: rows "claiming"; commit.       claim.intent_committed
3. the mover renames incoming/NAME -> working/ (each file)  claim.renamed
4. the mover fsyncs working/ and incoming/ once;
   ``judge_claim`` reads its answers                         claim.synced
5. ``judge_claim`` reads, hashes and routes each file; one
   still being written goes back to incoming/                claim.put_back
   or, its name taken again there, is kept in working/        claim.held
6. ``record_claimed``: rows "active", the others' deleted;
   commit (in the loop, not fsync'd: a power loss that takes it
   back leaves step 2, which recovery completes)            claim.committed

In the daemon the renames and fsyncs of a batch are done by the mover
process (``spool/mover.py``) while the loop records another batch
(``loop/transit.py``, which puts each step's commit in the pass's one
transaction); the steps of each batch stay in this order.

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
from collections.abc import Collection
from dataclasses import dataclass, field

from ..crashpoints import crashpoint
from ..errors import DiskFullError
from ..escaping import quoted
from ..ids import new_item_id
from ..pipeline import Routes
from ..spool import (
    FULL_ERRNOS,
    Entry,
    HeldOpenError,
    KeptByRuleError,
    Refusal,
    Spool,
    free_working_name,
)
from ..spool.mover import ClaimMove, Ticket
from ..state import ItemLog


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
            result.full = DiskFullError(f"claim of {quoted(entry.name)}: {os.strerror(err)}")
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


def intent_committed() -> None:
    """Step 2 is durable: the rows say "claiming", nothing is renamed yet."""
    crashpoint("claim.intent_committed")


def committed() -> None:
    """Step 6 is committed: the claim is recorded."""
    crashpoint("claim.committed")
