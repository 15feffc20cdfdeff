"""The "notify" step of the example orders pipeline: say what happened, in the log.

A stage is a callable taking dropline's StageContext (``ctx``) and returning
a mapping of metadata for the stages after it (or None).  Replace the log
line with a message to your team's chat, a ticket, or use the builtin
``webhook`` stage instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def announce(ctx: Any) -> Mapping[str, Any]:
    """After the load: one line naming the file, its rows and the table."""
    rows = ctx.metadata.get("loaded_rows", 0)
    table = ctx.metadata.get("table", "?")
    dropped = ctx.metadata.get("duplicates_dropped", 0)
    ctx.log.info("orders.loaded", rows=rows, table=table, duplicates_dropped=dropped)
    return {"announced": True}


def announce_failure(ctx: Any) -> None:
    """In on_failure: the file is bad; say which line is wrong."""
    failure = ctx.metadata.get("failure", {})
    ctx.log.warning(
        "orders.rejected", failed_stage=failure.get("stage"), reason=failure.get("reason")
    )
