"""Files kept in working/ because they could not be put back (``claim.py``).

A file found still being written when it was claimed goes back to
incoming/NAME.  When NAME is taken again there (its writer made a new file of
that name meanwhile, as a shell loop rewriting one file does), the claimed
file is an earlier delivery of NAME: putting it back under another name
would rename a dropper's file, and discarding it would lose it.  So it is
kept in working/ under its working name, its row still "claiming", and
claimed there, as an item of its own, once it has been unchanged for
settle_time (a writer that still holds it open would change it).  Until
then it takes its working name and a place among max_in_flight.  A stop or
a crash meanwhile leaves a claim that recovery completes at the next start.

A held file is never put back later, even once NAME is free again: a writer
that rewrites NAME in place would then overwrite it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline import Routes
from ..spool import ChangedError, Refusal, Spool
from .claim import Claimed, Held

_LOOK_AGAIN_MIN = 0.05  # seconds: never look again sooner than this
GONE = "gone from working/"


@dataclass
class Waiting:
    """A held file, and when the loop looks at it next."""

    held: Held
    due: float  # monotonic time of the next look
    seen: tuple[int, int, int] | None = None  # (size, mtime_ns, ctime_ns) at the last look


def look(
    spool: Spool, routes: Routes, waiting: Waiting, now: float, mono: float, settle_time: float
) -> Claimed | Refusal | None:
    """Claimed once the file has settled; None while it has not (``waiting.due``
    moves on); a Refusal when it is no longer an acceptable file (too large by
    now, unreadable, or gone): it cannot be claimed and must leave working/."""
    held = waiting.held
    entry = spool.working.entry(held.working_name)
    if entry is None:
        return Refusal(held.working_name, GONE, 0, 0)
    if isinstance(entry, Refusal):
        return entry
    seen = (entry.size, entry.mtime_ns, entry.ctime_ns)
    age = now - max(entry.mtime_ns, entry.ctime_ns) / 1e9
    if seen != waiting.seen or age < settle_time:
        waiting.seen = seen
        waiting.due = mono + max(settle_time - max(age, 0.0), _LOOK_AGAIN_MIN)
        return None
    try:
        sha256, size, ctime_ns = spool.working.hash(held.working_name, expect=entry)
    except ChangedError:  # written again while read: look again once settled
        waiting.seen = None
        waiting.due = mono + max(settle_time, _LOOK_AGAIN_MIN)
        return None
    except ValueError as exc:  # cannot be read safely: never claimable, never waited for
        return Refusal(held.working_name, str(exc), entry.dev, entry.ino)
    pipeline = routes.route(held.name)
    return Claimed(
        held.item_id,
        held.name,
        held.working_name,
        pipeline.name if pipeline else None,
        sha256,
        size,
        ctime_ns,
        held.created_at,
    )
