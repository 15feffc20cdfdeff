"""Requests the command line leaves in the database for the running daemon:
``dropline retry`` (a failed file back through its pipeline) and ``dropline
reload`` (read the configuration again and say whether it was applied)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..escaping import quoted
from ..lifecycle.requeue import RequeueResult, requeue_batch
from ..pipeline import Routes
from ..reloading import KIND as RELOAD
from ..reloading import Verdict
from ..spool import Spool
from ..state import ItemLog, RequestQueue

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


def serve_retries(
    requests: RequestQueue,
    items: ItemLog,
    spool: Spool,
    routes: Routes,
    room: int,
    in_use: set[bytes],
    now: float,
) -> RequeueResult | None:
    """Apply up to ROOM `dropline retry` requests; None when there was none."""
    # A reload request that came after the reloads were served waits for the next look.
    asked = [r for r in requests.open_requests(room) if r[1] != RELOAD]
    if not asked:
        return None
    retry_ids = [item_id for _, kind, item_id in asked if kind == "retry"]
    result = requeue_batch(items, spool, routes, retry_ids, now, in_use)
    answers = []
    for request_id, kind, item_id in asked:
        if kind != "retry":
            answers.append((request_id, f"unknown request {quoted(kind)}"))
        else:
            answers.append((request_id, result.answer(item_id)))
    with requests.db.transaction():
        requests.finish_requests(answers, now)
    return result
