"""``dropline replay``: an archived file through a pipeline again, as a new item.

The archived file never leaves archive/: a copy of it comes into working/.
Each step is durable before the next depends on it, as in ``requeue.py``:

replay: a new row "replaying" per file (its stage, the old item's metadata,
        where its copy comes from), an event on each item naming the
        other -> commit
        copy archive/[DAY/]NAME -> working/ (a temporary, fsync'd, renamed
        into place); fsync working/ once
        hash; rows "active" from the stage asked -> commit

The new item has an id of its own (a new idempotency key: a load keyed on
it loads the rows again, which is what a replay is for) and its own end in
archive/ or failed/ beside the old one.  Recovery completes a "replaying"
row the same way (``complete_replay``): its copy already in working/ ->
active; else copied again while the archived file is there; else vanished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..crashpoints import crashpoint
from ..errors import DiskFullError
from ..escaping import escape_text
from ..ids import new_item_id
from ..pipeline import Pipeline, Routes
from ..spool import WORKING_TEMP_PREFIX, Spool, end_folder, free_working_name
from ..stages import DATA_PATH, FAILURE
from ..state import ItemLog, ItemRow, ReplayRows
from .claim import Claimed

KIND = "replay"  # the kind of its requests (state/requests.py)


@dataclass
class Replayed:
    """A new item whose copy is in working/, recorded active from NEXT_STAGE."""

    claimed: Claimed
    next_stage: int
    metadata: dict[str, Any]


@dataclass
class ReplayResult:
    replayed: list[Replayed] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # old item id -> why not
    made: dict[str, str] = field(default_factory=dict)  # old item id -> new item id
    vanished: list[str] = field(default_factory=list)  # new items whose copy could not be made
    # New item id -> why its copy could not be made: vanished, or (no room) abandoned.
    lost: dict[str, str] = field(default_factory=dict)
    abandoned: list[str] = field(default_factory=list)  # new rows deleted: no room for the copy

    def answer(self, item_id: str) -> str:
        """What became of the replay of ITEM_ID, as `dropline replay` reports it."""
        if item_id in self.refused:
            return self.refused[item_id]
        new = self.made.get(item_id, "")
        if new in self.abandoned:
            return f"not replayed: {self.lost[new]}"
        if new in self.vanished:
            return f"its copy could not be made ({self.lost[new]}): item {new} vanished"
        return f"replayed as {new}"


def archived_at(row: ItemRow) -> str:
    """Where the item ended in archive/, for messages: "archive/2026-12-06/a.csv"
    (or in the folder named for duplicates: "duplicates/2026-12-06/a.csv")."""
    return f"{end_folder('archived', row.final_dir)}/{escape_text(row.final_name or b'')}"


def plan(
    row: ItemRow | None, routes: Routes, spool: Spool, from_stage: str | None, room: list[int]
) -> tuple[Pipeline, int, dict[str, Any]] | str:
    """The pipeline, the stage index and the metadata to replay ROW with, or why not.

    ROOM: the bytes still free in working/ for this batch's copies, [n]; the
    copy's size is taken from it when the replay is planned.
    """
    if row is None:
        return "unknown item"
    if row.state != "archived":
        hint = " (dropline retry sends a failed file again)" if row.state == "failed" else ""
        return f"it is {row.state}, not archived{hint}"
    if not row.final_name:
        return "no place where it ended is recorded for it"
    size = spool.ends.archived_size(row.final_dir or "", row.final_name)
    if size is None:
        return f"{archived_at(row)} is no longer there"
    # Its own pipeline if it is still configured, else where its name goes now.
    pipeline = routes.get(row.pipeline) or routes.route(row.name)
    if pipeline is None:
        return "no pipeline takes its name now"
    index, metadata = 0, {}
    if from_stage is not None:
        names = [s.name for s in pipeline.stages]
        if from_stage not in names:
            listed = ", ".join(names) or "none"
            return f'pipeline "{pipeline.name}" has no stage "{from_stage}" (its stages: {listed})'
        index = names.index(from_stage)
        # A transform whose output the stages after it read went with the old item's
        # scratch folder (one that archives its output left it in archive/: fine).
        derived = [
            s.name
            for s in pipeline.stages[:index]
            if s.config.kind == "builtin"
            and s.config.builtin == "transform"
            and s.config.options.get("archive", "original") != "transformed"
        ]
        if derived:
            return (
                f'stage "{derived[-1]}" derives the data the stages after it read, and its '
                f'output went with the old item: replay from "{derived[-1]}" or before'
            )
        # What the stages before it returned, as the old item ended.
        metadata = {k: v for k, v in row.metadata.items() if k not in (FAILURE, DATA_PATH)}
    if size >= room[0]:
        return f"no room in working/ for its copy ({size} bytes; {max(room[0], 0)} free)"
    room[0] -= size
    return pipeline, index, metadata


def replay_batch(
    items: ItemLog,
    spool: Spool,
    routes: Routes,
    asked: list[tuple[str, str | None]],
    now: float,
    in_use: set[bytes],
    answer: Callable[[ReplayResult], None] | None = None,
    min_free: int = 0,
) -> ReplayResult:
    """Replay each archived item of ASKED, (item id, stage to start from or None).

    IN_USE: the names in working/ now and those unfinished rows hold.  ANSWER,
    if given, is called inside the transaction that records the new rows (the
    daemon answers the requests there: a crash after it never makes a request
    replay twice).
    """
    result = ReplayResult()
    replays = ReplayRows(items.db)
    taken = set(in_use)
    new_rows: list[ItemRow] = []
    # Room for the copies, less the margin the daemon keeps free (min_free_space).
    room = [spool.ends.working_free() - min_free]
    with items.db.transaction():
        for old_id, from_stage in asked:
            if old_id in result.made:
                continue  # asked twice in one batch: one copy
            under_way = replays.under_way(old_id)
            if under_way is not None:
                result.refused[old_id] = f"a replay of it is under way (item {under_way})"
                continue
            row = items.item(old_id)
            planned = plan(row, routes, spool, from_stage, room)
            if isinstance(planned, str):
                result.refused[old_id] = planned
                continue
            assert row is not None and row.final_name is not None
            pipeline, index, metadata = planned
            new_id = new_item_id(now)
            working_name = free_working_name(row.name, new_id, taken)
            taken.add(working_name)
            source = (row.final_dir or "", row.final_name)
            replays.insert_replaying(
                new_id, old_id, row.name, working_name, pipeline.name, index, metadata, source, now
            )
            start = f' from stage "{pipeline.stages[index].name}"' if index else ""
            items.add_event(new_id, "replay", now, f"of {old_id} ({archived_at(row)}){start}")
            items.add_event(old_id, "replayed", now, f"as {new_id}{start}")
            result.made[old_id] = new_id
            new_rows.append(
                dataclasses.replace(
                    row,
                    id=new_id,
                    working_name=working_name,
                    pipeline=pipeline.name,
                    state="replaying",
                    next_stage=index,
                    metadata=metadata,
                    created_at=now,
                )
            )
        if answer is not None:
            answer(result)
    crashpoint("replay.intent_committed")
    complete_replay(items, spool, new_rows, now, result)
    return result


def complete_replay(
    items: ItemLog, spool: Spool, rows: list[ItemRow], now: float, result: ReplayResult
) -> None:
    """Bring the copies of rows recorded as "replaying" into working/, record them active.

    A copy the disk has no room for is abandoned: its row goes (the old item's
    history says so) and nothing else stops, not the daemon's start either.
    """
    if not rows:
        return
    copied: list[ItemRow] = []
    lost: list[ItemRow] = []
    for row in rows:
        temp = WORKING_TEMP_PREFIX + b"replay-" + row.id.encode()
        source = (row.final_dir or "", row.final_name or b"")
        try:
            said = spool.ends.replay_copy(*source, row.working_name, temp)
        except DiskFullError as exc:
            said = f"no room in working/: {exc}"
            result.abandoned.append(row.id)
        if said == "copied":
            copied.append(row)
        else:
            result.lost[row.id] = said
            lost.append(row)
    spool.sync()
    crashpoint("replay.synced")
    replays = ReplayRows(items.db)
    with items.db.transaction():
        for row in copied:
            try:
                sha256, size, ctime_ns = spool.working.hash(row.working_name)
            except ValueError as exc:  # only dropline writes working/: not expected
                result.lost[row.id] = f"its copy in working/: {exc}"
                lost.append(row)
                continue
            replays.mark_replayed(row.id, sha256, size, ctime_ns, now)
            claimed = Claimed(
                row.id, row.name, row.working_name, row.pipeline, sha256, size, ctime_ns, now
            )
            result.replayed.append(Replayed(claimed, row.next_stage, dict(row.metadata)))
        for row in lost:
            why = f"its copy from {archived_at(row)}: {result.lost[row.id]}"
            old = replays.replay_of(row.id)
            if row.id in result.abandoned:
                items.delete_item(row.id)  # its events go with it
                if old is not None:
                    items.add_event(old, "replay", now, f"as {row.id} abandoned: {why}")
            else:
                items.mark_finished_many([("vanished", row.id)], now)
                items.add_event(row.id, "vanished", now, why)
                result.vanished.append(row.id)


__all__ = ["KIND", "ReplayResult", "Replayed", "complete_replay", "plan", "replay_batch"]
