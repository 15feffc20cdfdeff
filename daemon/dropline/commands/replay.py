"""``dropline replay``: archived files through their pipeline again, as new items.

Each archived file is copied (never moved: archive/ keeps it) into working/
as a new item linked to the old one, from the first stage or from the one
``--from-stage`` names.  Applied by the running daemon, or here when none
runs (``handoff.py``); either way ``lifecycle/replay.py`` does the copying,
durably.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import console as c
from ..config import Config
from ..errors import ConfigError, NotFoundError
from ..escaping import unescape_text
from ..state import ItemLog, ItemQuery, StateReader
from .handoff import hand_off, render_answers

if TYPE_CHECKING:
    from ..pipeline import Routes
    from ..spool import Spool

_PAGE = 1000
_REPLAYED = "replayed as "


def select(
    config: Config, keys: list[str], glob: str | None, since: float | None, pipeline: str | None
) -> list[str]:
    """The item ids to replay: named ones (ids or file names), or the archived items
    whose name matches GLOB.  A name stands for its newest archived item (with
    none, for its newest item, so that the answer says why not)."""
    ids: list[str] = []
    with StateReader(config.state_db) as reader, reader.snapshot():
        if glob is not None:
            query = ItemQuery(glob=glob, since=since, pipeline=pipeline, states=("archived",))
            while page := reader.search(query, _PAGE, len(ids)):
                ids.extend(item.id for item in page)
            return ids[::-1]  # oldest first: replayed in the order they first came
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
            archived = [i for i in named if i.state == "archived"]
            ids.append((archived or named)[0].id)
        return list(dict.fromkeys(ids))


def check_stage(config: Config, stage: str | None) -> None:
    """--from-stage must name a stage of some pipeline (each item is judged in turn)."""
    if stage is None:
        return
    known = {s.name for p in config.pipelines for s in p.stages}
    if stage not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f'--from-stage: no pipeline has a stage "{stage}" (stages: {listed})')


def run(config: Config, item_ids: list[str], from_stage: str | None, wait: float) -> dict[str, Any]:
    """Replay ITEM_IDS; the outcome per item as one JSON-ready document."""
    if not item_ids:
        return {"applied_by": "offline", "replayed": 0, "not_replayed": 0, "items": []}

    def replay(
        items: ItemLog, spool: Spool, routes: Routes, ids: list[str], now: float, used: set[bytes]
    ) -> dict[str, str]:
        from ..lifecycle.replay import replay_batch

        asked = [(i, from_stage) for i in ids]
        min_free = routes.config.min_free_space
        result = replay_batch(items, spool, routes, asked, now, used, min_free=min_free)
        return {item_id: result.answer(item_id) for item_id in ids}

    mode, answers = hand_off(config, "replay", item_ids, wait, replay, detail=from_stage)
    items = []
    for item_id, answer in answers.items():
        new = answer.removeprefix(_REPLAYED) if answer and answer.startswith(_REPLAYED) else None
        items.append({"item": item_id, "result": answer or "pending", "new_item": new})
    return {
        "applied_by": mode,
        "replayed": sum(1 for i in items if i["new_item"]),
        "not_replayed": sum(1 for i in items if not i["new_item"]),
        "items": items,
    }


def render(doc: dict[str, Any], out: c.Console) -> None:
    render_answers(
        doc,
        out,
        done="replayed",
        verb="replayed as ",
        nothing="Nothing to replay: no archived file matched.",
        offline="their copies wait in working/ and run when the daemon starts",
    )


__all__ = ["check_stage", "render", "run", "select"]
