"""The rows ``dropline prune`` deletes: finished items beyond retention, old requests.

Rows are marked "pruning" first, their files deleted next (by the caller),
the rows last; see retention.py for why in that order.
"""

from __future__ import annotations

from .db import Database
from .schema import ItemState


class Pruning:
    """The pruning queries of the items and requests tables, over one Database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def select_for_pruning(self, states: tuple[str, ...], before: float, limit: int) -> list[str]:
        """Ids of finished items older than BEFORE, oldest first."""
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            "SELECT id FROM items "  # noqa: S608 - marks
            f"WHERE state IN ({marks}) AND finished_at < ? ORDER BY finished_at LIMIT ?",
            (*states, before, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def prunable(self, states: tuple[str, ...], before: float) -> list[tuple[str, int, int]]:
        """(state, files, bytes) finished before BEFORE, per state (one index range each)."""
        out = []
        for state in states:
            count, size = self.db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM items "
                "WHERE state = ? AND finished_at < ?",
                (state, before),
            ).fetchone()
            out.append((state, int(count), int(size)))
        return out

    def pruning_items(self, limit: int) -> list[tuple[str, str, str | None, bytes | None]]:
        """Items marked for pruning: (id, outcome, final_dir, final_name)."""
        rows = self.db.execute(
            "SELECT id, outcome, final_dir, final_name FROM items "  # noqa: S608 - a constant state
            f"WHERE state = '{ItemState.PRUNING}' LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(i), str(o or ""), d, n) for i, o, d, n in rows]

    def mark_pruning(self, item_ids: list[str], states: tuple[str, ...]) -> int:
        """Claim rows for pruning (the daemon's retry only takes "failed" rows)."""
        marks = ",".join("?" * len(states))
        cur = self.db.connection.executemany(
            f"UPDATE items SET state = '{ItemState.PRUNING}', "  # noqa: S608 - marks
            f"outcome = CASE WHEN state = '{ItemState.VANISHED}' THEN '{ItemState.VANISHED}' "
            "ELSE outcome END "
            f"WHERE id = ? AND state IN ({marks})",
            [(item_id, *states) for item_id in item_ids],
        )
        return int(cur.rowcount)

    def delete_pruned(self, item_ids: list[str]) -> None:
        """The rows, their attempts and events (ON DELETE CASCADE)."""
        self.db.many(
            f"DELETE FROM items WHERE id = ? AND state = '{ItemState.PRUNING}'",  # noqa: S608
            [(i,) for i in item_ids],
        )

    def delete_old_requests(self, before: float) -> int:
        cur = self.db.execute(
            "DELETE FROM requests WHERE done_at IS NOT NULL AND done_at < ?", (before,)
        )
        return int(cur.rowcount)


__all__ = ["Pruning"]
