"""The first item of each content (SHA-256) in a pipeline that skips duplicates.

Read and written in the transaction that records a file's first stage start
(``loop/duplicates.py``): a crash has both the start and the row, or neither.
"""

from __future__ import annotations

from .db import Database
from .schema import UNFINISHED, sql_list


class ContentRows:
    """The contents table, over one Database (inside its transaction())."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def first_of(self, pipeline: str, sha256: str, since: float, item_id: str) -> str | None:
        """The earlier item of PIPELINE with this content since SINCE that counts: one
        archived, or on its way and not failing (a file that failed is sent again on
        purpose).  None if there is none (ITEM_ID itself never counts)."""
        row = self.db.execute(
            "SELECT c.item_id FROM contents c JOIN items i ON i.id = c.item_id "  # noqa: S608
            "WHERE c.pipeline = ? AND c.sha256 = ? AND c.at >= ? AND c.item_id != ? "
            f"AND (i.state = 'archived' OR (i.state IN ({sql_list(UNFINISHED)}) "
            "AND (i.outcome IS NULL OR i.outcome = 'archived')))",
            (pipeline, sha256, since, item_id),
        ).fetchone()
        return str(row[0]) if row else None

    def remember(self, pipeline: str, sha256: str, item_id: str, now: float) -> None:
        """ITEM_ID is now the first of this content in PIPELINE."""
        self.db.execute(
            "INSERT INTO contents (pipeline, sha256, item_id, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pipeline, sha256) DO UPDATE SET item_id = excluded.item_id, "
            "at = excluded.at",
            (pipeline, sha256, item_id, now),
        )

    def asked_for(self, item_id: str) -> bool:
        """Whether ITEM_ID runs because the operator asked: a replay (``dropline
        replay``), or a file judged a duplicate and sent again since (``dropline
        retry`` of it): never a duplicate then.  (A duplicate whose end a crash
        cut short has no retry after its judgement: it is judged again.)"""
        row = self.db.execute(
            "SELECT replay_of IS NOT NULL OR EXISTS (SELECT 1 FROM events r "
            "WHERE r.item_id = items.id AND r.event = 'retry' AND r.id > "
            "(SELECT max(d.id) FROM events d WHERE d.item_id = items.id "
            "AND d.event = 'duplicate')) FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        return bool(row and row[0])


__all__ = ["ContentRows"]
