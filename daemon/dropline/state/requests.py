"""Requests from the command line to the running daemon (``retry``, ``reload``).

A command leaves a row in ``requests``; the daemon answers it in its loop and
the command polls for the answer.  Nothing here waits: the polling is the
commands'.
"""

from __future__ import annotations

from typing import Any

from .db import Database


class RequestQueue:
    """The requests table, over one Database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_requests(
        self, kind: str, item_ids: list[str], now: float, detail: str | None = None
    ) -> list[int]:
        """DETAIL: the request's argument, if its kind takes one (replay: the stage)."""
        ids = []
        for item_id in item_ids:
            cur = self.db.execute(
                "INSERT INTO requests (kind, item_id, requested_at, detail) VALUES (?, ?, ?, ?)",
                (kind, item_id, now, detail),
            )
            ids.append(int(cur.lastrowid or 0))
        return ids

    def open_requests(
        self, limit: int, kind: str | None = None
    ) -> list[tuple[int, str, str, str | None]]:
        """Requests not yet done (of KIND, if given), oldest first: (id, kind, item_id, detail).

        Kinds: "retry" (item_id: the item), "replay" (item_id: the archived
        item; detail: the stage to start from, or None for the first),
        "reload" (item_id: the file the command checked; result: the
        daemon's verdict as JSON, see reloading.py).
        """
        if kind is None:
            sql = (
                "SELECT id, kind, item_id, detail FROM requests WHERE done_at IS NULL "
                "ORDER BY id LIMIT ?"
            )
            params: tuple[Any, ...] = (limit,)
        else:
            sql = (
                "SELECT id, kind, item_id, detail FROM requests WHERE done_at IS NULL AND kind = ? "
                "ORDER BY id LIMIT ?"
            )
            params = (kind, limit)
        rows = self.db.execute(sql, params).fetchall()
        return [(int(i), str(k), str(item), d) for i, k, item, d in rows]

    def finish_requests(self, results: list[tuple[int, str]], now: float) -> None:
        """Rows of (request id, result)."""
        self.db.many(
            "UPDATE requests SET done_at = ?, result = ? WHERE id = ?",
            [(now, result, request_id) for request_id, result in results],
        )

    def withdraw_request(self, request_id: int, reason: str, now: float) -> bool:
        """Close a request the daemon has not done yet (its command gave up waiting);
        False if the daemon did it meanwhile (its result stands)."""
        cur = self.db.execute(
            "UPDATE requests SET done_at = ?, result = ? WHERE id = ? AND done_at IS NULL",
            (now, reason, request_id),
        )
        return cur.rowcount == 1

    def request_results(self, request_ids: list[int]) -> dict[int, str | None]:
        """Result of each request (None while the daemon has not done it)."""
        out: dict[int, str | None] = {}
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT id, result FROM requests WHERE id IN ({marks})",  # noqa: S608 - marks
                tuple(chunk),
            ).fetchall()
            out.update({int(i): r for i, r in rows})
        return out


__all__ = ["RequestQueue"]
