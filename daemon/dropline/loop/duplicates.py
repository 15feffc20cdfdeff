"""Files a pipeline has had already (``duplicates: skip``), found before their first stage.

Judged in the transaction that records the first stage's start
(``Attempts.start``'s screen), by the SHA-256 taken at the claim: a file
whose content an earlier file of the pipeline had within
``duplicate_window`` does not run; it ends unprocessed (``duplicates_to``:
archive/, failed/ or a folder of the data folder named for them), its
history pointing to that earlier item (an event "duplicate"), and
``file.duplicate`` is logged.  An earlier file still on its way makes it
wait (if that one fails, this one runs: a file sent again after a failure
is meant to run); one that failed or vanished does not count.  A crash
between the judgement and the end judges it again: nothing runs twice.
A replay (``dropline replay``) is never a duplicate: it is asked for, and
neither is a duplicate sent again by ``dropline retry`` (from failed/, with
``duplicates_to: failed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..stages import FAILURE
from ..state import ContentRows, ItemLog
from .attempts import Job

# Seconds before a file whose earlier twin is on its way is judged again, unless the
# twin ends first (then at once: ``FlowControl.twins_ended``); each look costs a start
# commit, so not every pass while the twin waits for its retries.
WAIT = 5.0


@dataclass
class Screened:
    """What the last screen found: item id -> the earlier item it repeats, or the
    earlier item on its way that it waits for."""

    duplicates: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)

    @property
    def held(self) -> set[str]:
        return set(self.duplicates) | set(self.waiting)


def screen(items: ItemLog, jobs: list[Job], now: float) -> Screened:
    """Judge the first stages of JOBS (caller's transaction); remember the content of
    those that run."""
    found = Screened()
    rows = ContentRows(items.db)
    for item, pipeline, index, _ in jobs:
        config = pipeline.config
        skip = config.duplicates == "skip" and index == 0 and item.sha256
        if not skip or FAILURE in item.metadata or rows.asked_for(item.id):
            continue
        assert item.sha256 is not None
        first = rows.first_of(pipeline.name, item.sha256, now - config.duplicate_window, item.id)
        if first is None:
            rows.remember(pipeline.name, item.sha256, item.id, now)
            continue
        state = items.item(first)
        if state is not None and state.state != "archived":
            found.waiting[item.id] = first  # its twin is on its way: judged again after it
            continue
        items.add_event(item.id, "duplicate", now, f"of {first} (the same SHA-256)")
        found.duplicates[item.id] = first
    return found


__all__ = ["WAIT", "Screened", "screen"]
