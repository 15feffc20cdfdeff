"""Pipelines held by their breaker (``loop/gates.py``), kept across restarts.

A row per held pipeline: the stage that failed for every file, since when,
why (its last error) and the delay before the next probe; it goes when a
probe succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .db import Database


@dataclass
class HoldRow:
    pipeline: str
    stage: str
    since: float
    reason: str
    probe_delay: float


class HoldRows:
    """The holds table, over one Database (writes inside its transaction())."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def held(self) -> dict[str, HoldRow]:
        rows = self.db.execute(
            "SELECT pipeline, stage, since, reason, probe_delay FROM holds"
        ).fetchall()
        return {
            str(r[0]): HoldRow(str(r[0]), str(r[1]), float(r[2]), str(r[3]), float(r[4]))
            for r in rows
        }

    def hold(self, row: HoldRow) -> None:
        self.db.execute(
            "INSERT INTO holds (pipeline, stage, since, reason, probe_delay) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET stage = excluded.stage, "
            "since = excluded.since, reason = excluded.reason, probe_delay = excluded.probe_delay",
            (row.pipeline, row.stage, row.since, row.reason, row.probe_delay),
        )

    def probed(self, pipeline: str, reason: str, probe_delay: float) -> None:
        """A probe failed: its error, and the next one's delay."""
        self.db.execute(
            "UPDATE holds SET reason = ?, probe_delay = ? WHERE pipeline = ?",
            (reason, probe_delay, pipeline),
        )

    def release(self, pipeline: str) -> None:
        self.db.execute("DELETE FROM holds WHERE pipeline = ?", (pipeline,))


__all__ = ["HoldRow", "HoldRows"]
