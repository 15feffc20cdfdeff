"""The transit: claims and finishes in the mover's hands.

The mover answers in order.  Each pass records what it did with the oldest
claim batch and the finishes sent the pass before (``receive``: one
transaction), while it already moves the next claim batch; then the pass
sends the next finishes and claims (``send``: their intents in one
transaction).  So the mover is never idle while the loop records, and the
loop makes two commits per pass.  The order of each batch's steps, and their
crash points, are ``lifecycle/claim.py``'s and ``lifecycle/finish.py``'s:
this module only schedules the batches.

It also keeps the files claimed while still written that could not be put
back (``holding.py``), until they settle in working/.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import DiskFullError
from ..lifecycle import claim as claim_steps
from ..lifecycle import finish as finish_steps
from ..lifecycle.claim import (
    ClaimBatch,
    Claimed,
    ClaimResult,
    judge_claim,
    plan_claim,
    record_active,
    record_claim_intent,
    record_claimed,
)
from ..lifecycle.finish import (
    Finish,
    FinishBatch,
    plan_finish,
    record_finish_intent,
    record_finished,
    take_answers,
    write_reasons,
)
from ..lifecycle.holding import GONE, Waiting, look
from ..spool import Entry, Refusal, Spool
from ..spool.mover import Ticket
from ..state import ItemLog
from .context import LoopContext

# Claim batches with the mover at once: while it moves one, the loop records
# the one before and the mover has the next one queued.
CLAIMS_AHEAD = 2
RETRY_FULL_AFTER = 1.0  # seconds before finishes stopped by ENOSPC are tried again


class MoverLink(Protocol):
    """The mover as the loop sees it (``mover.Mover``): batches sent, answers read in order."""

    def send(self, kind: str, moves: Sequence[Any]) -> Ticket: ...

    def answer(self, ticket: Ticket) -> Any: ...

    def close(self) -> None: ...


@dataclass
class Received:
    """What one pass recorded of the mover's answers."""

    claim: ClaimResult | None = None
    finished: list[Finish] = field(default_factory=list)  # files that reached their end
    # Files kept in working/ that settled and are now claimed, and those given up.
    settled: list[Claimed] = field(default_factory=list)
    given_up: list[Refusal] = field(default_factory=list)


class Transit:
    """Claim and finish batches between the loop and the mover."""

    def __init__(
        self,
        ctx: LoopContext,
        items: ItemLog,
        spool: Spool,
        mover: MoverLink,
        disk_full: Callable[[DiskFullError], None],
    ) -> None:
        self.ctx = ctx
        self.item_log = items
        self.spool = spool
        self.mover = mover
        self.disk_full = disk_full
        # Batches handed to the mover, oldest first (its answers come in order).
        self.claiming: collections.deque[ClaimBatch] = collections.deque()
        # Of each batch in self.claiming, its files by pipeline (each pipeline's bound).
        self.claiming_by: collections.deque[dict[str | None, int]] = collections.deque()
        self.finishing: collections.deque[FinishBatch] = collections.deque()
        self.to_finish: list[Finish] = []
        self.retry_finishes_at = 0.0  # after ENOSPC while finishing
        # Claimed last pass with no stage to run: recorded with their finish intent.
        self.unrecorded: dict[str, Claimed] = {}
        # Files that could not be put back, kept in working/ until they settle (holding.py).
        self.kept: dict[str, Waiting] = {}
        # Entries in working/ dropline did not put there: their names stay taken.
        self.stranded: set[bytes] = set()

    # --- what the loop asks ---------------------------------------------------

    def has_work(self) -> bool:
        """Answers to read, or finishes to send now (the loop does not sleep)."""
        if self.claiming or self.finishing:
            return True  # their answers are read in the next pass
        return bool(self.to_finish) and self.ctx.mono >= self.retry_finishes_at

    def next_deadline(self) -> float | None:
        deadlines = []
        if self.to_finish:
            deadlines.append(self.retry_finishes_at)
        if self.kept and not self.ctx.stopping:
            deadlines.append(min(w.due for w in self.kept.values()))
        return min(deadlines) if deadlines else None

    def moving(self) -> bool:
        """Files to finish, or batches with the mover: a stop waits for them."""
        return bool(self.to_finish or self.claiming or self.finishing)

    def idle(self) -> bool:
        return not (self.moving() or self.kept)

    def in_claim(self) -> int:
        """Files on their way into working/ (each takes a place among max_in_flight)."""
        return sum(len(batch.plans) for batch in self.claiming) + len(self.kept)

    def in_claim_of(self, pipeline: str | None) -> int:
        """Files of PIPELINE on their way into working/ (a file kept while still
        written counts against every pipeline: they are few and short-lived)."""
        return sum(by.get(pipeline, 0) for by in self.claiming_by) + len(self.kept)

    def working_names(self) -> set[bytes]:
        """The names taken in working/ apart from the items in flight."""
        names = set(self.stranded)
        names |= {waiting.held.working_name for waiting in self.kept.values()}
        for batch in self.claiming:
            names |= batch.working_names
        return names

    def names_being_claimed(self) -> set[bytes]:
        """Names in incoming/ whose claim is with the mover."""
        return {entry.name for batch in self.claiming for _, entry, _ in batch.plans}

    # --- the mover's answers ------------------------------------------------------

    def receive(self, now: float) -> Received:
        """Read the mover's answers for the oldest claim batch and the finishes in
        flight, and record them all in one transaction."""
        got = Received()
        claim = self.claiming.popleft() if self.claiming else None
        if claim is not None:
            self.claiming_by.popleft()
        # While claims keep it busy, the finishes sent last pass wait a pass more:
        # the mover does them after the claim read here, and the loop is not
        # held up waiting for them.
        keep = 1 if self.claiming else 0
        finishes = [self.finishing.popleft() for _ in range(len(self.finishing) - keep)]
        result = None
        if claim is not None:
            assert claim.ticket is not None
            answers = self.mover.answer(claim.ticket)
            result = judge_claim(self.spool, self.ctx.routes, claim, answers)
        for batch in finishes:
            assert batch.ticket is not None
            take_answers(self.item_log, self.spool, batch, self.mover.answer(batch.ticket))
        if finishes:
            finish_steps.synced()
        if claim is None and not finishes:
            return got
        if result is not None:
            self.unrecorded = {c.item_id: c for c in result.claimed if self._goes_straight_on(c)}
        # Not fsync'd: these record what the renames did, and the renames are
        # on disk already (the mover fsynced their folders).  A power loss that
        # takes the record back leaves the intent ("claiming", "finishing"),
        # which recovery completes from what it finds on disk, as after a crash
        # before this commit; the next durable commit puts it on disk anyway.
        with self.item_log.db.transaction(durable=False):
            if claim is not None and result is not None:
                record_claimed(self.item_log, claim, result, later=self.unrecorded)
            for batch in finishes:
                record_finished(self.item_log, batch)
        if result is not None:
            claim_steps.committed()
            self._claimed(result)
            got.claim = result
        if finishes:
            finish_steps.committed()
        for batch in finishes:
            got.finished.extend(self._ended(batch))
        return got

    def _goes_straight_on(self, c: Claimed) -> bool:
        """Whether a file just claimed has no stage to run: it is finished this pass."""
        pipeline = self.ctx.routes.get(c.pipeline)
        return pipeline is None or not pipeline.stages

    def _claimed(self, result: ClaimResult) -> None:
        """The transit's part of what a claim batch did: kept, taken, stranded."""
        if result.full is not None:
            self.disk_full(result.full)
        settle_time = self.ctx.config.settle_time
        for held in result.held:
            self.kept[held.item_id] = Waiting(held, self.ctx.mono + settle_time)
            self.ctx.log.info(
                "file.busy",
                item=held.item_id,
                file=held.name,
                detail="still being written, and a new file of its name came meanwhile: "
                "kept in working/ as an earlier delivery, claimed once it settles",
            )
        for name, working_name in result.taken:
            # Only dropline writes into working/; an entry it did not know of has
            # that name: taken from now on, the file is claimed under another name.
            self.stranded.add(working_name)
            self.ctx.log.warning(
                "claim.name_taken",
                file=name,
                working=working_name,
                detail="an entry unknown to dropline has this name in working/; "
                "claimed again under a unique name",
            )
        self.stranded.update(result.stranded)

    def _ended(self, batch: FinishBatch) -> list[Finish]:
        """A finish batch recorded: the files that ended; the others are kept."""
        ended = []
        for f in batch.finishes:
            if f.state:
                ended.append(f)
            else:  # a full disk stopped it: recorded as finishing, tried again
                self.to_finish.append(f)
        if self.to_finish:
            self.retry_finishes_at = self.ctx.mono + RETRY_FULL_AFTER
            self.disk_full(DiskFullError("no space left to move files to their end"))
        return ended

    # --- the next batches ---------------------------------------------------

    def send(
        self,
        now: float,
        finishes: list[Finish],
        next_entries: Callable[[], list[Entry]] | None,
        in_use: Callable[[], set[bytes]],
    ) -> list[Finish]:
        """Plan the next finishes and claims, commit their intents at once, hand
        their moves to the mover (finishes first: their answers are read first).

        NEXT_ENTRIES: the next files to claim (None: no claim now); IN_USE: the
        names taken in working/.  Returns the files that ended at once (a batch
        moved here, on another filesystem or after ENOSPC)."""
        self.to_finish.extend(finishes)
        finish = None
        if self.to_finish and self.ctx.mono >= self.retry_finishes_at:
            finish = plan_finish(self.spool, self.to_finish, now)
            self.to_finish = []
        claims: list[ClaimBatch] = []
        while next_entries is not None and len(self.claiming) < CLAIMS_AHEAD:
            entries = next_entries()
            if not entries:
                break
            claim = plan_claim(self.spool, entries, now, in_use())
            self.claiming.append(claim)  # its names are taken from now on
            self.claiming_by.append(self._by_pipeline(entries))
            claims.append(claim)
        if (finish is not None and finish.fresh) or claims or self.unrecorded:
            with self.item_log.db.transaction():
                if finish is not None:
                    record_finish_intent(self.item_log, finish, self.unrecorded)
                # Not finishing after all (finishing is paused after ENOSPC): active.
                record_active(self.item_log, list(self.unrecorded.values()), now)
                self.unrecorded = {}
                for claim in claims:
                    record_claim_intent(self.item_log, claim)
            if finish is not None and finish.fresh:
                finish_steps.intent_committed()
            if claims:
                claim_steps.intent_committed()
        ended = self._move_finishes(finish) if finish is not None else []
        for claim in claims:
            claim.ticket = self.mover.send("claim", claim.moves)
        return ended

    def _by_pipeline(self, entries: list[Entry]) -> dict[str | None, int]:
        by: dict[str | None, int] = {}
        for entry in entries:
            route = self.ctx.routes.route(entry.name)
            pipeline = route.name if route is not None else None
            by[pipeline] = by.get(pipeline, 0) + 1
        return by

    def _move_finishes(self, batch: FinishBatch) -> list[Finish]:
        """The reasons of the failures first, then the moves: by the mover, or here."""
        write_reasons(self.spool, batch)
        moves = None if batch.full else batch.moves(self.spool)
        if moves is not None:
            batch.ticket = self.mover.send("finish", moves)
            self.finishing.append(batch)
            return []
        # A full disk stopped the reasons, or a destination on another
        # filesystem needs a copy: this batch is moved here, at once.
        finish_steps.complete_here(self.item_log, self.spool, batch)
        return self._ended(batch)

    # --- files kept in working/ (holding.py) --------------------------------------

    def look_at_kept(self, now: float, got: Received) -> None:
        """Claim the kept files that have settled (into GOT.settled); give back the
        ones that can no longer be claimed (GOT.given_up)."""
        mono, settle_time = self.ctx.mono, self.ctx.config.settle_time
        claimed: list[Claimed] = []
        given_up: list[tuple[Waiting, Refusal, bytes | None]] = []
        for item_id, waiting in list(self.kept.items()):
            if waiting.due > mono:
                continue
            found = look(self.spool, self.ctx.routes, waiting, now, mono, settle_time)
            if found is None:
                continue
            if isinstance(found, Refusal):
                # Too large by now, unreadable (or removed by hand): it cannot be
                # claimed; back into incoming/, where it is refused like any such file.
                back = None
                if found.reason != GONE:
                    held = waiting.held
                    back = self.spool.working.unclaim_somewhere(
                        held.working_name, held.name, item_id
                    )
                    if back is None:  # the filesystem is full: kept, tried again later
                        waiting.due = mono + max(settle_time, 1.0)
                        continue
                given_up.append((waiting, found, back))
            else:
                claimed.append(found)
            del self.kept[item_id]
        if not claimed and not given_up:
            return
        if given_up:
            self.spool.sync()
        with self.item_log.db.transaction():
            record_active(self.item_log, claimed, now)
            for c in claimed:
                self.item_log.add_event(
                    c.item_id, "claimed", now, "an earlier delivery kept in working/, now settled"
                )
            for waiting, _, _ in given_up:
                self.item_log.delete_item(waiting.held.item_id)
        claim_steps.committed()
        for waiting, refusal, back in given_up:
            if back is not None:
                got.given_up.append(
                    Refusal(back, refusal.reason, refusal.dev, refusal.ino, refusal.kind)
                )
            else:
                self.ctx.log.error(
                    "file.vanished", item=waiting.held.item_id, file=waiting.held.name
                )
        got.settled.extend(claimed)
