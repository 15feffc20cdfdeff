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

A crash between any two steps leaves a state that recovery completes or
undoes (``recovery.py``).  One transaction and one fsync per folder per batch,
never per file.  A full filesystem stops a batch where it is: the files not
yet moved stay where they were, recorded as such, to be tried again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .crashpoints import crashpoint
from .errors import DiskFullError
from .ids import new_item_id
from .log import escape_text
from .pipeline import Routes
from .spool import ChangedError, Entry, Refusal, Spool
from .state import State


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
class ClaimResult:
    """What a claim batch did."""

    claimed: list[Claimed] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    busy: list[bytes] = field(default_factory=list)  # still being written: put back
    full: DiskFullError | None = None  # the disk-full error that stopped the batch


def claim_batch(
    state: State,
    spool: Spool,
    routes: Routes,
    entries: list[Entry],
    now: float,
    in_use: set[bytes],
) -> ClaimResult:
    """Claim ENTRIES (checked regular files in incoming/) into working/.

    IN_USE: the names in working/ now (only dropline writes there).
    """
    plans: list[tuple[str, Entry, bytes]] = []
    taken = set(in_use)
    for entry in entries:
        item_id = new_item_id(now)
        working_name = spool.free_working_name(entry.name, item_id, taken)
        taken.add(working_name)
        plans.append((item_id, entry, working_name))
    with state.transaction():
        state.insert_claiming_many(
            [(item_id, e.name, working_name, e.dev, e.ino) for item_id, e, working_name in plans],
            now,
        )
    crashpoint("claim.intent_committed")

    moved: list[tuple[str, Entry, bytes]] = []
    gone: list[str] = []
    full: DiskFullError | None = None
    for item_id, entry, working_name in plans:
        if full is not None:
            gone.append(item_id)  # not tried: still in incoming/, claimed later
            continue
        try:
            renamed = spool.claim(entry.name, working_name)
        except DiskFullError as exc:
            full, renamed = exc, False
        if renamed:
            moved.append((item_id, entry, working_name))
            crashpoint("claim.renamed")
        else:
            gone.append(item_id)
    spool.sync()
    crashpoint("claim.synced")

    result = ClaimResult(full=full)
    claimed, refused = result.claimed, result.refused
    for item_id, entry, working_name in moved:
        try:
            sha256, size, ctime_ns = spool.hash_working(working_name, expect=entry)
        except ChangedError:
            # Its writer is still at work: back to incoming/, claimed once it is done.
            spool.unclaim(working_name, entry.name)
            result.busy.append(entry.name)
            gone.append(item_id)
            continue
        except (ValueError, OSError) as exc:
            # The name was swapped between our check and the rename: give the
            # entry back untouched and refuse it.
            spool.unclaim(working_name, entry.name)
            refused.append(Refusal(entry.name, f"changed while being claimed: {exc}", 0, 0))
            gone.append(item_id)
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
                now,
            )
        )
    if refused or result.busy:
        spool.sync()
    with state.transaction():
        for item_id in gone:
            state.delete_item(item_id)
        state.mark_active_many(
            [(c.pipeline, c.sha256, c.size, c.ctime_ns, c.item_id) for c in claimed], now
        )
    crashpoint("claim.committed")
    return result


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


def _move_to_end(state: State, spool: Spool, f: Finish, day: str, now: float) -> bool:
    """Move one file to its recorded destination; choose (and record) again if taken."""
    taken: set[tuple[str, bytes]] = set()
    while True:
        try:
            return spool.finish(f.working_name, f.outcome, f.final_dir, f.final_name)
        except FileExistsError:
            pass
        # Someone put a file under the chosen name.  The new choice is recorded
        # (and, for a failure, its reason written and made durable) before the move.
        if f.outcome == "failed":
            spool.remove_error(f.final_name)
        taken.add((f.final_dir, f.final_name))
        f.final_dir, f.final_name = spool.choose_destination(
            f.outcome, f.name, f.item_id, day, taken
        )
        with state.transaction():
            state.mark_finishing(f.item_id, f.outcome, f.reason, f.final_dir, f.final_name, now)
        if f.outcome == "failed":
            spool.write_error(f.final_name, error_document(f, now))
            spool.sync()


def finish_batch(state: State, spool: Spool, finishes: list[Finish], now: float) -> list[Finish]:
    """Move FINISHES to archive/ or failed/; returns them with ``state`` set.

    A full disk stops the moves: the files not moved keep ``state`` empty and
    stay recorded as "finishing" with their destination, for a later try.
    """
    if not finishes:
        return []
    day = time.strftime("%Y-%m-%d", time.localtime(now))
    fresh = [f for f in finishes if not f.final_name]
    if fresh:
        taken: set[tuple[str, bytes]] = set()
        with state.transaction():
            for f in fresh:
                f.final_dir, f.final_name = spool.choose_destination(
                    f.outcome, f.name, f.item_id, day, taken
                )
                taken.add((f.final_dir, f.final_name))
            state.mark_finishing_many(
                [(f.outcome, f.reason, f.final_dir, f.final_name, f.item_id) for f in fresh], now
            )
        crashpoint("finish.intent_committed")

    # The reasons first, all durable (one fsync of failed/) before any file joins
    # its reason: a file in failed/ always has its NAME.error.json beside it.
    full = False
    for f in finishes:
        if f.outcome == "failed" and not full and spool.in_working(f.working_name):
            try:
                spool.write_error(f.final_name, error_document(f, now))
            except DiskFullError:
                full = True
                continue
            crashpoint("finish.error_written")
    spool.sync()

    for f in finishes:
        if full:
            continue
        try:
            moved = _move_to_end(state, spool, f, day, now)
        except DiskFullError:
            full = True
            continue
        if moved:
            f.state = f.outcome
            crashpoint("finish.renamed")
        elif spool.destination_exists(f.outcome, f.final_dir, f.final_name):
            f.state = f.outcome  # moved before a crash; recovery is completing it
        else:
            f.state = "vanished"
    spool.sync()
    crashpoint("finish.synced")

    done = [f for f in finishes if f.state]
    with state.transaction():
        state.mark_finished_many([(f.state, f.item_id) for f in done], now)
    crashpoint("finish.committed")
    return finishes
