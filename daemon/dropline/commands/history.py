"""``dropline history``: the provenance of a file, from its claim to its end.

The timeline is assembled from the item's row (claim, end), its stage
attempts (start, end, outcome, error; the delay before each retry is the gap
to the next attempt) and its events (recovery, retries from failed/).

What to show: an item id; a file name (as ``status`` or the journal printed
it, escapes and all, or a path whose last part is the name); a glob; or
none, with filters (claimed since, until, pipeline, outcome).  Newest first,
a page at a time.  One id or one name shows each item's story; a glob or
filters list the items found, one line each.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

from .. import console as c
from ..errors import NotFoundError
from ..escaping import unescape_text
from ..spool import end_folder
from ..state import AttemptView, ItemQuery, ItemView, StateReader

_ITEM_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_GLOB = re.compile(r"[*?\[]")
PER_PAGE = 20


@dataclasses.dataclass(frozen=True)
class Found:
    """A page of items, and what it was."""

    items: list[ItemView]
    listed: bool  # a search (one line each), not one file's story
    more: bool  # another page follows


def find(
    reader: StateReader, key: str | None, filters: ItemQuery, page: int, per_page: int
) -> Found:
    """The items for KEY (an id, a name, a path, a glob or None) and FILTERS: the
    PAGE-th PER_PAGE of them, newest first.  NotFoundError if there are none."""
    if key is not None and _ITEM_ID.fullmatch(key.upper()):
        item = reader.item(key.upper())
        if item is not None:
            return Found([item], listed=False, more=False)
    filtered = filters != ItemQuery()
    # (query, listed): the first that finds anything on page 1 is the one paged.
    queries: list[tuple[ItemQuery, bool]] = [(filters, True)]
    if key is not None:
        name = unescape_text(key)
        # A name first, even one with [, * or ? in it (scan[1].pdf), then as a glob.
        queries = [(dataclasses.replace(filters, name=name), filtered)]
        if b"/" in name:  # a path: its last part, if the whole is no name
            queries.append((dataclasses.replace(filters, name=name.rpartition(b"/")[2]), filtered))
        if _GLOB.search(key):
            queries.append((dataclasses.replace(filters, glob=os.fsdecode(name)), True))
    offset = (page - 1) * per_page
    for query, listed in queries:
        rows = reader.search(query, per_page + 1, offset)
        if rows:
            return Found(rows[:per_page], listed, more=len(rows) > per_page)
        if offset and reader.search(query, 1):
            break  # found, but not this far: the page is beyond the end
    if key is None:
        what = "no item"
    elif _GLOB.search(key):
        what = f'no file matching "{c.name(unescape_text(key))}"'
    else:  # as it was typed (the escapes it holds read, then written again)
        what = f'no item and no file named "{c.name(unescape_text(key))}"'
    beyond = f" on page {page}" if page > 1 else ""
    raise NotFoundError(f"{what}{beyond} in the state database" + _filters_said(filters))


def _filters_said(filters: ItemQuery) -> str:
    said = []
    if filters.pipeline is not None:
        said.append(f"pipeline {filters.pipeline}")
    if filters.states:
        said.append("state " + " or ".join(filters.states))
    if filters.since is not None:
        said.append(f"claimed since {c.iso(filters.since)}")
    if filters.until is not None:
        said.append(f"claimed before {c.iso(filters.until)}")
    return f" ({', '.join(said)})" if said else ""


def _where(item: ItemView) -> str | None:
    if not item.final_name or item.state not in ("archived", "failed", "finishing"):
        return None
    return f"{end_folder(item.outcome, item.final_dir)}/{c.name(item.final_name)}"


def _took(a: AttemptView) -> float | None:
    """How long the attempt ran, as the stage measured itself (the log's "seconds");
    for an attempt recorded before that was kept, from its start to its end."""
    if a.seconds is not None:
        return round(a.seconds, 3)
    return round(a.ended_at - a.started_at, 3) if a.ended_at else None


def timeline(
    item: ItemView, attempts: list[AttemptView], reader: StateReader
) -> list[dict[str, Any]]:
    """Every step of one item, in time order, as JSON-ready entries."""
    steps: list[tuple[float, int, dict[str, Any]]] = []
    events = reader.events(item.id)
    # A replay's item was never claimed: it begins as a copy from archive/ (its
    # "replay" event, at its creation, says of which item).
    if not any(e.event == "replay" and e.at == item.created_at for e in events):
        claimed = {
            "at": c.iso(item.created_at),
            "event": "claimed",
            "detail": f"incoming/{c.name(item.name)}",
        }
        steps.append((item.created_at, 0, claimed))
    for n, a in enumerate(attempts):
        entry: dict[str, Any] = {
            "at": c.iso(a.started_at),
            "event": "stage",
            "stage": a.stage,
            "attempt": a.attempt,
            "outcome": a.outcome or "running",
            "seconds": _took(a),
            "ended_at": c.iso(a.ended_at),
            "error": a.error,
        }
        if a.outcome == "retrying" and a.ended_at is not None:
            later = [b for b in attempts[n + 1 :] if b.stage_index == a.stage_index]
            if later:
                entry["retry_after_seconds"] = round(later[0].started_at - a.ended_at, 3)
            elif item.next_attempt_at:
                entry["retry_due_at"] = c.iso(item.next_attempt_at)
        steps.append((a.started_at, 2, entry))
    # An event (a retry from failed/, a recovery) sorts before a stage started at
    # the same moment: the loop records it first, in the same pass.
    for e in events:
        steps.append((e.at, 1, {"at": c.iso(e.at), "event": e.event, "detail": e.detail}))
    if item.finished_at is not None and item.state in ("archived", "failed", "vanished"):
        end: dict[str, Any] = {"at": c.iso(item.finished_at), "event": item.state}
        where = _where(item)
        if where:
            end["to"] = where
        if item.reason:
            end["reason"] = item.reason
        steps.append((item.finished_at, 3, end))
    steps.sort(key=lambda s: (s[0], s[1]))
    return [s[2] for s in steps]


def collect(
    reader: StateReader,
    key: str | None,
    filters: ItemQuery | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> dict[str, Any]:
    """The history of KEY as one JSON-ready document: {"items": [...]}, newest first."""
    out = []
    with reader.snapshot():
        found = find(reader, key, filters or ItemQuery(), page, per_page)
        for item in found.items:
            attempts = reader.attempts(item.id)
            out.append(
                {
                    "item": item.id,
                    "file": c.name(item.name),
                    "pipeline": item.pipeline,
                    "state": item.state,
                    "size": item.size,
                    "sha256": item.sha256,
                    "claimed_at": c.iso(item.created_at),
                    "finished_at": c.iso(item.finished_at),
                    "where": _where(item),
                    "reason": item.reason,
                    "attempts": len(attempts),
                    "metadata": item.metadata,
                    "timeline": timeline(item, attempts, reader),
                }
            )
    return {
        "items": out,
        "listed": found.listed,
        "page": page,
        "per_page": per_page,
        "more": found.more,
    }


_COLOUR = {"succeeded": "green", "retrying": "yellow", "failed": "red", "indeterminate": "red"}


def render(doc: dict[str, Any], out: c.Console) -> None:
    if doc.get("listed"):
        _render_list(doc, out)
    else:
        _render_stories(doc, out)
    if doc.get("more"):
        out.line()
        out.line(f"More: the same with --page {doc['page'] + 1}")


def _render_list(doc: dict[str, Any], out: c.Console) -> None:
    """One line per item: when it was claimed, what it is, where it is now."""
    rows = []
    colours: list[str | None] = []
    for item in doc["items"]:
        state = item["state"]
        rows.append(
            [
                c.stamp(c.parse_iso(item["claimed_at"])),
                item["item"],
                c.shorten(item["file"], 40),
                item["pipeline"] or "-",
                state,
                c.shorten(item["where"] or item["reason"] or "", 50),
            ]
        )
        colours.append({"failed": "red", "vanished": "red"}.get(state))
    out.table(["CLAIMED", "ITEM", "FILE", "PIPELINE", "STATE", "WHERE"], rows, colours=colours)


def _render_stories(doc: dict[str, Any], out: c.Console) -> None:
    now = time.time()
    for n, item in enumerate(doc["items"]):
        if n:
            out.line()
        state = item["state"]
        colour = {"archived": "green", "failed": "red", "vanished": "red"}.get(state, "yellow")
        out.line(
            out.paint(f"{item['file']}", "bold")
            + f"  item {item['item']}, pipeline {item['pipeline'] or '-'}: "
            + out.paint(state, colour)
            + (f" in {item['where']}" if item["where"] else "")
        )
        out.line(f"  size {c.size(item['size'])}, sha256 {item['sha256'] or '-'}")
        rows = []
        colours: list[str | None] = []
        for step in item["timeline"]:
            when = c.stamp(c.parse_iso(step["at"]))
            if step["event"] == "stage":
                what = f"{step['stage']} #{step['attempt']}"
                outcome = step["outcome"]
                took = c.span(step["seconds"]) if step["seconds"] is not None else "-"
                detail = step["error"] or ""
                if "retry_after_seconds" in step:
                    detail = f"retried after {c.span(step['retry_after_seconds'])}: {detail}"
                elif "retry_due_at" in step:
                    detail = f"retry due {c.ago(c.parse_iso(step['retry_due_at']), now)}: {detail}"
                rows.append([when, what, outcome, took, c.shorten(detail, 70)])
                colours.append(_COLOUR.get(outcome))
            else:
                detail = step.get("detail") or step.get("to") or ""
                if step.get("reason"):
                    detail = f"{detail}: {step['reason']}" if detail else step["reason"]
                rows.append([when, step["event"], "", "", c.shorten(detail, 70)])
                colours.append(_COLOUR.get(step["event"]))
        out.table(["WHEN", "STEP", "OUTCOME", "TOOK", "DETAIL"], rows, colours=colours)


__all__ = ["collect", "find", "render", "timeline"]
