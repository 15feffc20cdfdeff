"""Moves the command line asks for (``retry``, ``replay``): applied by the running
daemon, or here when none runs.

While the daemon runs, the command leaves requests in the state database and
waits for the daemon to apply them (the daemon alone moves files in
working/).  While it does not run, the command takes the daemon's locks
(the state's, then the data folder's, in the daemon's order) and applies
them itself; the daemon runs the files when it starts.  A daemon of another
state that runs on the same data folder refuses it (exit 1): working/ is
that daemon's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..console import Console
from ..datalock import acquire_data_lock
from ..errors import StateLockedError
from ..state import Database, ItemLog, RequestQueue, acquire_lock

if TYPE_CHECKING:
    from ..pipeline import Routes
    from ..spool import Spool

BATCH = 256
_POLL = 0.1

# Applies a batch of item ids offline: (item log, spool, routes, ids, now, names in
# working/) -> the answer per id.
Offline = Callable[["ItemLog", "Spool", "Routes", list[str], float, set[bytes]], dict[str, str]]


def _offline(
    config: Config, lock_fds: tuple[int, int], ids: list[str], apply: Offline
) -> dict[str, str]:
    from ..pipeline import Routes
    from ..spool import Spool

    results: dict[str, str] = {}
    db = Database(config.state_db)
    spool = Spool(config.data_dir, max_file_size=config.max_file_size, layout=config.archive_layout)
    try:
        routes = Routes(config)
        items = ItemLog(db)
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            # The names in working/, and those rows still on their way there hold (a
            # retry or a replay a crash cut short, completed when the daemon starts).
            in_use = set(spool.working.names())
            in_use.update(row.working_name for row in items.unfinished_items())
            results.update(apply(items, spool, routes, chunk, time.time(), in_use))
    finally:
        spool.close()
        db.close()
        for fd in lock_fds:
            os.close(fd)
    return results


def _through_daemon(
    config: Config, kind: str, ids: list[str], wait: float, detail: str | None
) -> dict[str, str | None]:
    """The daemon runs: leave requests, wait (up to WAIT seconds) for its answers."""
    db = Database(config.state_db)
    requests = RequestQueue(db)
    try:
        with db.transaction():
            request_ids = requests.add_requests(kind, ids, time.time(), detail)
        deadline = time.monotonic() + wait
        while True:
            answers = requests.request_results(request_ids)
            if all(answers.get(r) is not None for r in request_ids) or time.monotonic() > deadline:
                break
            time.sleep(_POLL)
    finally:
        db.close()
    return {item_id: answers.get(r) for item_id, r in zip(ids, request_ids, strict=True)}


def hand_off(
    config: Config,
    kind: str,
    ids: list[str],
    wait: float,
    apply: Offline,
    detail: str | None = None,
) -> tuple[str, dict[str, str | None]]:
    """Apply request KIND (with DETAIL) to IDS: ("daemon" or "offline", answer per id;
    None: the daemon has not answered within WAIT seconds)."""
    try:
        lock_fd = acquire_lock(config.state_db)
    except StateLockedError:
        return "daemon", _through_daemon(config, kind, ids, wait, detail)
    try:
        data_fd = acquire_data_lock(config.data_dir, lock_fd, wait=1.0)
    except BaseException:
        os.close(lock_fd)
        raise
    return "offline", dict(_offline(config, (lock_fd, data_fd), ids, apply))


def render_answers(
    doc: dict[str, Any], out: Console, *, done: str, verb: str, nothing: str, offline: str
) -> None:
    """For people: the answer per item of a retry or a replay (DONE: the count's key,
    "requeued" or "replayed"), then what it did (OFFLINE: where the files wait when
    no daemon runs)."""
    items = doc["items"]
    if not items:
        out.line(nothing)
        return
    ok = [i["result"].startswith(verb) for i in items]
    colours: list[str | None] = [None if good else "red" for good in ok]
    out.table(["ITEM", "RESULT"], [[i["item"], i["result"]] for i in items], colours=colours)
    out.line()
    where = "the daemon runs them now" if doc["applied_by"] == "daemon" else offline
    pending = any(i["result"] == "pending" for i in items)
    missed = doc[f"not_{done}"]
    if doc[done]:
        out.line(f"{doc[done]} {done} ({where}); {missed} not {done}.")
    elif not pending:
        out.line(f"Nothing {done}: {missed} not {done} (see RESULT).")
    if pending:
        out.line(
            "Pending: the daemon has not answered yet; the requests stay queued and are "
            "applied when it gets to them (see `dropline status`)."
        )


__all__ = ["BATCH", "Offline", "hand_off", "render_answers"]
