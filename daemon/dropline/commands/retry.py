"""``dropline retry``: send failed files through their pipelines again.

While the daemon runs, the command leaves requests in the state database and
waits for the daemon to apply them (the daemon alone moves files in
working/).  While it does not run, the command takes the daemon's locks
(the state's, then the data folder's, in the daemon's order) and moves the
files back to working/ itself; the daemon runs them when it starts.  A
daemon of another state that runs on the same data folder refuses it
(exit 1): working/ is that daemon's.  Either way ``requeue.py`` does the
moving, durably.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import console as c
from ..config import Config
from ..datalock import acquire_data_lock
from ..errors import NotFoundError, StateLockedError
from ..escaping import unescape_text
from ..state import Database, ItemLog, RequestQueue, StateReader, acquire_lock

_BATCH = 256
_POLL = 0.1


def select(
    config: Config, keys: list[str], all_failed: bool, since: float | None, pipeline: str | None
) -> list[str]:
    """The item ids to retry: named ones (ids or file names), or every failed one.

    A name stands for its failed items; with none, for its newest item, so that
    the answer (it is archived, not failed, say) is the one its id gets.  A
    name is read as ``status`` prints it (``escaping.unescape_text``)."""
    with StateReader(config.state_db) as reader, reader.snapshot():
        if all_failed:
            return reader.failed_ids(since, pipeline)
        ids: list[str] = []
        for key in keys:
            item = reader.item(key.upper())
            if item is not None:
                ids.append(item.id)
                continue
            named = reader.items_named(unescape_text(key))  # newest first
            if not named:
                raise NotFoundError(
                    f'no item id and no file named "{c.name(unescape_text(key))}" '
                    "in the state database"
                )
            failed = [i for i in named if i.state == "failed"]
            ids.extend(i.id for i in failed or named[:1])
        return list(dict.fromkeys(ids))


def _offline(config: Config, lock_fds: tuple[int, int], item_ids: list[str]) -> dict[str, str]:
    """No daemon: move the files back to working/ here, holding its locks (LOCK_FDS)."""
    from ..lifecycle.requeue import requeue_batch
    from ..pipeline import Routes
    from ..spool import Spool

    results: dict[str, str] = {}
    db = Database(config.state_db)
    spool = Spool(config.data_dir, max_file_size=config.max_file_size, layout=config.archive_layout)
    try:
        routes = Routes(config)
        for start in range(0, len(item_ids), _BATCH):
            chunk = item_ids[start : start + _BATCH]
            in_use = set(spool.working.names())
            result = requeue_batch(ItemLog(db), spool, routes, chunk, time.time(), in_use)
            results.update({item_id: result.answer(item_id) for item_id in chunk})
    finally:
        spool.close()
        db.close()
        for fd in lock_fds:
            os.close(fd)
    return results


def _through_daemon(config: Config, item_ids: list[str], wait: float) -> dict[str, str | None]:
    """The daemon runs: leave requests, wait (up to WAIT seconds) for its answers."""
    db = Database(config.state_db)
    requests = RequestQueue(db)
    try:
        with db.transaction():
            request_ids = requests.add_requests("retry", item_ids, time.time())
        deadline = time.monotonic() + wait
        while True:
            answers = requests.request_results(request_ids)
            if all(answers.get(r) is not None for r in request_ids) or time.monotonic() > deadline:
                break
            time.sleep(_POLL)
    finally:
        db.close()
    return {item_id: answers.get(r) for item_id, r in zip(item_ids, request_ids, strict=True)}


def run(config: Config, item_ids: list[str], wait: float) -> dict[str, Any]:
    """Retry ITEM_IDS; the outcome per item as one JSON-ready document."""
    if not item_ids:  # nothing matched: neither the lock nor the database is touched
        return {"applied_by": "offline", "requeued": 0, "not_requeued": 0, "items": []}
    try:
        lock_fd = acquire_lock(config.state_db)
    except StateLockedError:
        answers = _through_daemon(config, item_ids, wait)
        mode = "daemon"
    else:
        try:
            data_fd = acquire_data_lock(config.data_dir, lock_fd, wait=1.0)
        except BaseException:
            os.close(lock_fd)
            raise
        answers = dict(_offline(config, (lock_fd, data_fd), item_ids))
        mode = "offline"
    items = [
        {"item": item_id, "result": answer or "pending", "requeued": answer == "requeued"}
        for item_id, answer in answers.items()
    ]
    return {
        "applied_by": mode,
        "requeued": sum(1 for i in items if i["requeued"]),
        "not_requeued": sum(1 for i in items if not i["requeued"]),
        "items": items,
    }


def render(doc: dict[str, Any], out: c.Console) -> None:
    if not doc["items"]:
        out.line("Nothing to retry: no failed file matched.")
        return
    rows = [[i["item"], i["result"]] for i in doc["items"]]
    colours: list[str | None] = [None if i["requeued"] else "red" for i in doc["items"]]
    out.table(["ITEM", "RESULT"], rows, colours=colours)
    out.line()
    where = (
        "the daemon runs them now"
        if doc["applied_by"] == "daemon"
        else "they are back in working/ and run when the daemon starts"
    )
    if doc["requeued"]:
        out.line(f"{doc['requeued']} requeued ({where}); {doc['not_requeued']} not requeued.")
    elif not any(i["result"] == "pending" for i in doc["items"]):
        out.line(f"Nothing requeued: {doc['not_requeued']} not requeued (see RESULT).")
    if any(i["result"] == "pending" for i in doc["items"]):
        out.line(
            "Pending: the daemon has not answered yet; the requests stay queued and are "
            "applied when it gets to them (see `dropline status`)."
        )


__all__ = ["render", "run", "select"]
