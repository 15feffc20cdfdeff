"""Pipelines the operator paused (``dropline pause``), kept across restarts.

A paused pipeline's row stays until ``dropline resume``; one no longer
configured keeps its row (configured again, it is still paused).
"""

from __future__ import annotations

from .db import Database


class PauseRows:
    """The pauses table, over one Database (writes inside its transaction())."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def paused(self) -> dict[str, tuple[float, str]]:
        """Each paused pipeline: (since, reason)."""
        rows = self.db.execute("SELECT pipeline, since, reason FROM pauses").fetchall()
        return {str(p): (float(since), str(reason or "")) for p, since, reason in rows}

    def pause(self, pipeline: str, now: float, reason: str) -> bool:
        """Pause PIPELINE; False if it was paused already (its first pause stands)."""
        cur = self.db.execute(
            "INSERT INTO pauses (pipeline, since, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (pipeline) DO NOTHING",
            (pipeline, now, reason or None),
        )
        return cur.rowcount == 1

    def resume(self, pipeline: str) -> bool:
        """Resume PIPELINE; False if it was not paused."""
        cur = self.db.execute("DELETE FROM pauses WHERE pipeline = ?", (pipeline,))
        return cur.rowcount == 1


__all__ = ["PauseRows"]
