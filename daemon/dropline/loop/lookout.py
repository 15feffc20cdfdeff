"""A last look at a file in working/ before its next step: is a writer still
holding it open, has its content changed since the claim?

The claim moved the file out of every dropper's reach, but a writer that
kept it open across the rename can still write: then what a stage would see,
or archive/ would keep, is not what was dropped.  Neither look is repeated in
the pass that claimed the file (its fstat and lease probe are milliseconds
old, after the rename).
"""

from __future__ import annotations

from ..spool import Spool
from .context import LoopContext
from .items import Item


def still_held_open(ctx: LoopContext, spool: Spool, item: Item, held: set[str]) -> bool:
    """Whether a process still holds ITEM open for writing as it is about to
    leave working/; said once per file (HELD: the ids already said)."""
    if item.fingerprint_pass == ctx.passes:
        return False  # probed at its claim this very pass: no new writer since
    if not spool.working.held_open(item.working_name):
        held.discard(item.id)
        return False
    if item.id not in held:
        held.add(item.id)
        ctx.log.warning(
            "file.held_open",
            item=item.id,
            file=item.name,
            detail="a process still holds it open for writing in working/; it leaves once closed",
        )
    return True


def changed_since(ctx: LoopContext, spool: Spool, item: Item) -> str | None:
    """Why ITEM fails, if its content changed since the claim (or since a stage
    that may rewrite it); None if it has not.  Its fingerprint is updated, so
    that on_failure stages run on what is there."""
    if item.fingerprint_pass == ctx.passes:
        return None  # the claim's fstat, this very pass
    seen = spool.working.fingerprint(item.working_name)
    if item.fingerprint is None or seen is None or seen == item.fingerprint:
        return None
    reason = (
        "modified after it was claimed (a writer still held it open): "
        f"size {item.fingerprint[0]} -> {seen[0]}"
    )
    item.fingerprint = seen
    return reason
