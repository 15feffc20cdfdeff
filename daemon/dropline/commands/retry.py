"""``dropline retry``: send failed files through their pipelines again.

Applied by the running daemon, or here when none runs (``handoff.py``);
either way ``requeue.py`` does the moving, durably.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import console as c
from ..config import Config
from ..errors import NotFoundError
from ..escaping import unescape_text
from ..state import ItemLog, StateReader
from .handoff import hand_off, render_answers

if TYPE_CHECKING:
    from ..pipeline import Routes
    from ..spool import Spool


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


def _requeue(
    items: ItemLog, spool: Spool, routes: Routes, ids: list[str], now: float, in_use: set[bytes]
) -> dict[str, str]:
    """No daemon runs: the failed files back to working/ here (``requeue.py``)."""
    from ..lifecycle.requeue import requeue_batch

    result = requeue_batch(items, spool, routes, ids, now, in_use)
    return {item_id: result.answer(item_id) for item_id in ids}


def run(config: Config, item_ids: list[str], wait: float) -> dict[str, Any]:
    """Retry ITEM_IDS; the outcome per item as one JSON-ready document."""
    if not item_ids:  # nothing matched: neither the lock nor the database is touched
        return {"applied_by": "offline", "requeued": 0, "not_requeued": 0, "items": []}
    mode, answers = hand_off(config, "retry", item_ids, wait, _requeue)
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
    render_answers(
        doc,
        out,
        done="requeued",
        verb="requeued",
        nothing="Nothing to retry: no failed file matched.",
        offline="they are back in working/ and run when the daemon starts",
    )


__all__ = ["render", "run", "select"]
