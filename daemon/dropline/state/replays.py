"""The rows of ``dropline replay``: a new item made from an archived one.

While its copy is on its way into working/ the new row says "replaying"
and its ``final_dir``/``final_name`` name where the copy comes from (the
old item's place in archive/): recovery needs nothing else to complete it.
Once the copy is in working/ the row is "active" like a claimed file's, its
end still to come.
"""

from __future__ import annotations

import json
from typing import Any

from .db import Database
from .schema import UNFINISHED, ItemState, sql_list


class ReplayRows:
    """The replay writes, over one Database (inside its transaction())."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def insert_replaying(
        self,
        item_id: str,
        replay_of: str,
        name: bytes,
        working_name: bytes,
        pipeline: str | None,
        next_stage: int,
        metadata: dict[str, Any],
        source: tuple[str, bytes],
        now: float,
    ) -> None:
        """The new item, replaying REPLAY_OF, its copy to come from archive/SOURCE."""
        self.db.execute(
            "INSERT INTO items (id, replay_of, name, working_name, pipeline, state, "
            "next_stage, metadata, final_dir, final_name, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item_id,
                replay_of,
                name,
                working_name,
                pipeline,
                ItemState.REPLAYING.value,
                next_stage,
                json.dumps(metadata),
                source[0],
                source[1],
                now,
                now,
            ),
        )

    def mark_replayed(
        self, item_id: str, sha256: str, size: int, ctime_ns: int, now: float
    ) -> None:
        """Its copy is in working/: active from the stage it was given."""
        self.db.execute(
            f"UPDATE items SET state = '{ItemState.ACTIVE}', sha256 = ?, size = ?, "  # noqa: S608
            "ctime_ns = ?, final_dir = NULL, final_name = NULL, updated_at = ? "
            f"WHERE id = ? AND state = '{ItemState.REPLAYING}'",
            (sha256, size, ctime_ns, now, item_id),
        )

    def under_way(self, replay_of: str) -> str | None:
        """An unfinished replay of item REPLAY_OF, if there is one (its id)."""
        row = self.db.execute(
            f"SELECT id FROM items WHERE replay_of = ? AND state IN ({sql_list(UNFINISHED)}) "  # noqa: S608
            "LIMIT 1",
            (replay_of,),
        ).fetchone()
        return str(row[0]) if row else None

    def replay_of(self, item_id: str) -> str | None:
        """The item ITEM_ID replays, if it is a replay."""
        row = self.db.execute("SELECT replay_of FROM items WHERE id = ?", (item_id,)).fetchone()
        return str(row[0]) if row and row[0] is not None else None


__all__ = ["ReplayRows"]
