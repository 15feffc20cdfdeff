"""Requests the command line leaves in the database for the running daemon:
``dropline retry`` (a failed file back through its pipeline), ``dropline
replay`` (a copy of an archived file through it again, as a new item) and
``dropline reload`` (read the configuration again and say whether it was
applied)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..escaping import quoted
from ..lifecycle.replay import KIND as REPLAY
from ..lifecycle.replay import ReplayResult, replay_batch
from ..lifecycle.requeue import RequeueResult, requeue_batch
from ..pipeline import Routes
from ..reloading import KIND as RELOAD
from ..reloading import Verdict
from ..spool import Spool
from ..state import ItemLog, RequestQueue
from .context import LoopContext
from .gates import PAUSE, RESUME
from .scheduler import Scheduler

_RELOADS_AT_ONCE = 64  # reload requests answered by one reading of the file


def serve_reloads(requests: RequestQueue, reload: Callable[[], Verdict]) -> None:
    """Answer `dropline reload`: one reading of the file, made after every request
    it answers was left, so the verdict is about the file as it is now."""
    reloads = requests.open_requests(_RELOADS_AT_ONCE, kind=RELOAD)
    if not reloads:
        return
    verdict = reload().to_json()
    with requests.db.transaction():
        requests.finish_requests([(r[0], verdict) for r in reloads], time.time())


def serve_moves(
    requests: RequestQueue,
    items: ItemLog,
    spool: Spool,
    routes: Routes,
    room: int,
    in_use: set[bytes],
    now: float,
) -> tuple[RequeueResult, ReplayResult] | None:
    """Apply up to ROOM `dropline retry` and `dropline replay` requests (each brings
    a file into working/); None when there was none."""
    # A reload request that came after the reloads were served waits for the next look.
    asked = [r for r in requests.open_requests(room) if r[1] not in (RELOAD, PAUSE, RESUME)]
    if not asked:
        return None
    retry_ids = [item_id for _, kind, item_id, _ in asked if kind == "retry"]
    requeued = requeue_batch(items, spool, routes, retry_ids, now, in_use)
    replays = [(item_id, detail) for _, kind, item_id, detail in asked if kind == REPLAY]
    replayed = ReplayResult()
    if replays:
        taken = in_use | {c.working_name for c in requeued.requeued}
        asked_ids = [(r, item_id) for r, kind, item_id, _ in asked if kind == REPLAY]

        def answer(result: ReplayResult) -> None:
            # With the new rows, in their transaction: a crash after it leaves no
            # request open to be replayed a second time at the next start.
            requests.finish_requests([(r, result.answer(i)) for r, i in asked_ids], now)

        min_free = routes.config.min_free_space
        replayed = replay_batch(items, spool, routes, replays, now, taken, answer, min_free)
    answers = []
    for request_id, kind, item_id, _ in asked:
        if kind == "retry":
            answers.append((request_id, requeued.answer(item_id)))
        elif kind == REPLAY:
            answers.append((request_id, replayed.answer(item_id)))
        else:
            answers.append((request_id, f"unknown request {quoted(kind)}"))
    with requests.db.transaction():
        requests.finish_requests(answers, now)
    return requeued, replayed


def admit_moved(
    ctx: LoopContext, scheduler: Scheduler, requeued: RequeueResult, replays: ReplayResult
) -> None:
    """The files ``serve_moves`` put in working/: run, and told; what it refused, told."""
    for r in requeued.requeued:
        scheduler.admit(r)
        ctx.events.requeued(r)
    for item_id, why in requeued.refused.items():
        ctx.log.warning("retry.refused", item=item_id, reason=why)
    for item_id in requeued.vanished:
        ctx.log.error("file.vanished", item=item_id, detail="missing from failed/")
    # Copies of archived files (``dropline replay``), each a new item.
    replay_of = {new: old for old, new in replays.made.items()}
    for rep in replays.replayed:
        c = rep.claimed
        scheduler.admit(c, rep.next_stage, rep.metadata)
        pipeline = ctx.routes.get(c.pipeline)
        stage = pipeline.stages[rep.next_stage].name if pipeline and rep.next_stage else ""
        ctx.events.replayed(c, replay_of.get(c.item_id, ""), stage)
    for item_id, why in replays.refused.items():
        ctx.log.warning("replay.refused", item=item_id, reason=why)
    for item_id in replays.vanished:
        ctx.log.error("file.vanished", item=item_id, detail=replays.lost[item_id])
    for item_id in replays.abandoned:
        ctx.log.warning("replay.abandoned", item=item_id, reason=replays.lost[item_id])
