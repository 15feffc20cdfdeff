"""The item log: each file's row from claim to end, its stage attempts and events.

The writes the daemon makes per batch of files take lists of rows and go out
as one statement per chunk of rows (``INSERT ... VALUES (...), (...)`` and
``UPDATE ... FROM (VALUES ...)``): the group commit's other half, and what the
throughput rests on.  Every write runs inside the caller's
``Database.transaction()``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .db import Database
from .schema import UNFINISHED, ItemState, sql_list


@dataclass
class ItemRow:
    """One row of ``items`` as the daemon needs it."""

    id: str
    name: bytes
    working_name: bytes
    pipeline: str | None
    state: str
    size: int | None
    sha256: str | None
    src_dev: int | None
    src_ino: int | None
    next_stage: int
    attempt: int
    next_attempt_at: float | None
    metadata: dict[str, Any]
    outcome: str | None
    reason: str | None
    final_dir: str | None  # under archive/: "", a day, or "../NAME[/DAY]" (spool/names.py)
    final_name: bytes | None
    created_at: float
    ctime_ns: int | None
    finished_at: float | None


@dataclass
class OpenAttempt:
    """A stage recorded as started and never recorded as ended: a crash hit it."""

    id: int
    stage_index: int
    stage: str
    attempt: int


_ITEM_COLUMNS = (
    "id, name, working_name, pipeline, state, size, sha256, src_dev, src_ino, next_stage, "
    "attempt, next_attempt_at, metadata, outcome, reason, final_dir, final_name, created_at, "
    "ctime_ns, finished_at"
)


_CHUNK_ROWS = 64  # rows per statement: well under SQLite's limit of bound values
# UPDATE ... FROM (SQLite 3.33): older libraries update one row per statement.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
_CLAIMED_FINISHING = (
    "pipeline",
    "sha256",
    "size",
    "ctime_ns",
    "outcome",
    "reason",
    "final_dir",
    "final_name",
    "updated_at",
)


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[tuple[list[Any], int]]:
    """ROWS in chunks of _CHUNK_ROWS, each flattened into one list of values."""
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        yield [value for row in chunk for value in row], len(chunk)


# Only constant column names and placeholders are put into the SQL text; every
# value is bound.


@functools.lru_cache(maxsize=64)
def _insert_sql(columns: str, row_sql: str, count: int) -> str:
    values = ", ".join([f"({row_sql})"] * count)
    return f"INSERT INTO items ({columns}) VALUES {values}"  # noqa: S608


@functools.lru_cache(maxsize=64)
def _starts_sql(count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * count)
    return (
        "INSERT INTO attempts (item_id, stage_index, stage, attempt, started_at) "  # noqa: S608
        f"VALUES {values} RETURNING id, item_id"
    )


@functools.lru_cache(maxsize=64)
def _update_sql(state: str | None, columns: tuple[str, ...], count: int) -> str:
    width = len(columns) + 1  # the id comes last
    sets = [f"{c} = v.column{n}" for n, c in enumerate(columns, 1)]
    if state:
        sets.insert(0, f"state = '{state}'")
    values = ", ".join(["(" + ", ".join("?" * width) + ")"] * count)
    return (
        f"UPDATE items SET {', '.join(sets)} FROM (VALUES {values}) AS v "  # noqa: S608
        f"WHERE items.id = v.column{width}"
    )


def _row_to_item(row: tuple[Any, ...]) -> ItemRow:
    values = list(row)
    values[12] = json.loads(values[12] or "{}")
    return ItemRow(*values)


class ItemLog:
    """The items, attempts and events tables, over one Database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- writes (inside Database.transaction()) -----------------------------

    def set_claim_source(self, item_id: str, dev: int, ino: int, now: float) -> None:
        """The inode a "claiming" row's file has in working/ (recovery matches it)."""
        self.db.execute(
            "UPDATE items SET src_dev = ?, src_ino = ?, updated_at = ? WHERE id = ?",
            (dev, ino, now, item_id),
        )

    def set_fingerprint(self, item_id: str, size: int, ctime_ns: int, now: float) -> None:
        """The working file as a stage left it (a stage may rewrite it on purpose)."""
        self.db.execute(
            "UPDATE items SET size = ?, ctime_ns = ?, updated_at = ? WHERE id = ?",
            (size, ctime_ns, now, item_id),
        )

    # The state changes take lists of rows only: one file (recovery, a taken
    # destination, a retried file gone) is a list of one, written by the same SQL
    # as a batch, so there is one writer per change to keep right.

    def insert_claiming_many(
        self, rows: list[tuple[str, bytes, bytes, int, int]], now: float
    ) -> None:
        """Rows of (id, name, working_name, dev, ino)."""
        self._insert_items(
            "id, name, working_name, src_dev, src_ino, created_at, updated_at, state",
            f"?, ?, ?, ?, ?, ?, ?, '{ItemState.CLAIMING}'",
            [(*row, now, now) for row in rows],
        )

    def mark_active_many(
        self, rows: list[tuple[str | None, str, int, int, str]], now: float
    ) -> None:
        """Rows of (pipeline, sha256, size, ctime_ns, id)."""
        self._update_items(
            ItemState.ACTIVE,
            ("pipeline", "sha256", "size", "ctime_ns", "updated_at"),
            [(p, h, size, ct, now, item_id) for p, h, size, ct, item_id in rows],
        )

    def mark_finishing_many(self, rows: list[tuple[str, str, str, bytes, str]], now: float) -> None:
        """Rows of (outcome, reason, final_dir, final_name, id)."""
        self._update_items(
            ItemState.FINISHING,
            ("outcome", "reason", "final_dir", "final_name", "updated_at"),
            [(o, r or None, d, n, now, item_id) for o, r, d, n, item_id in rows],
        )

    def mark_claimed_finishing_many(
        self, rows: list[tuple[str | None, str, int, int, str, str, str, bytes, str]], now: float
    ) -> None:
        """Rows of (pipeline, sha256, size, ctime_ns, outcome, reason, final_dir,
        final_name, id): "claiming" straight to "finishing" (a file with no stage)."""
        self._update_items(
            ItemState.FINISHING,
            _CLAIMED_FINISHING,
            [
                (p, h, size, ct, o, r or None, d, n, now, i)
                for p, h, size, ct, o, r, d, n, i in rows
            ],
        )

    def mark_finished_many(self, rows: list[tuple[str, str]], now: float) -> None:
        """Rows of (state, id)."""
        self._update_items(
            None,
            ("state", "finished_at", "updated_at"),
            [(st, now, now, item_id) for st, item_id in rows],
        )

    # A batch's rows are written with one statement per chunk of rows (a VALUES
    # list), not one per row: a fifth less time per file at full speed.

    def _insert_items(self, columns: str, row_sql: str, rows: list[tuple[Any, ...]]) -> None:
        for chunk, count in _chunks(rows):
            self.db.run(_insert_sql(columns, row_sql, count), chunk)

    def _update_items(
        self, state: str | None, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        """Set STATE (unless None) and COLUMNS on the rows of (*values, id)."""
        if not _UPDATE_FROM:
            sets = ", ".join(f"{c} = ?" for c in columns)
            fixed = f"state = '{state}', " if state else ""
            self.db.many(f"UPDATE items SET {fixed}{sets} WHERE id = ?", rows)  # noqa: S608
            return
        for chunk, count in _chunks(rows):
            self.db.run(_update_sql(state, columns, count), chunk)

    def delete_item(self, item_id: str) -> None:
        self.db.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def record_stage_start(
        self, item_id: str, stage_index: int, stage: str, attempt: int, now: float
    ) -> int:
        """Record that a stage is about to run; returns the attempt's row id."""
        cur = self.db.execute(
            "INSERT INTO attempts (item_id, stage_index, stage, attempt, started_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (item_id, stage_index, stage, attempt, now),
        )
        return int(cur.lastrowid or 0)

    def record_stage_starts(self, rows: list[tuple[str, int, str, int]], now: float) -> list[int]:
        """Record that these stages are about to run, rows of (item id, stage index,
        stage, attempt), one item once: their attempts' row ids, in order."""
        if not _RETURNING:
            return [self.record_stage_start(*row, now) for row in rows]
        ids: dict[str, int] = {}
        for chunk, count in _chunks([(*row, now) for row in rows]):
            cur = self.db.execute(_starts_sql(count), tuple(chunk))
            ids.update((item_id, int(row_id)) for row_id, item_id in cur.fetchall())
        return [ids[row[0]] for row in rows]

    def record_stage_ends(self, rows: list[tuple[str, str, float | None, int]], now: float) -> None:
        """Rows of (outcome, error, the attempt's own seconds, attempt id)."""
        self.db.many(
            "UPDATE attempts SET ended_at = ?, outcome = ?, error = ?, seconds = ? WHERE id = ?",
            [(now, outcome, error or None, took, at) for outcome, error, took, at in rows],
        )

    def set_progress_many(self, rows: list[tuple[int, dict[str, Any], str]], now: float) -> None:
        """Rows of (next stage, metadata, id): each item on to that stage, at once."""
        self._update_items(
            None,
            ("next_stage", "attempt", "next_attempt_at", "metadata", "updated_at"),
            [(stage, 0, None, json.dumps(meta), now, item_id) for stage, meta, item_id in rows],
        )

    def record_stage_end(
        self, attempt_id: int, outcome: str, error: str, now: float, seconds: float | None = None
    ) -> None:
        self.db.execute(
            "UPDATE attempts SET ended_at = ?, outcome = ?, error = ?, seconds = ? WHERE id = ?",
            (now, outcome, error or None, seconds, attempt_id),
        )

    def set_progress(
        self,
        item_id: str,
        next_stage: int,
        attempt: int,
        next_attempt_at: float | None,
        metadata: dict[str, Any],
        now: float,
    ) -> None:
        self.db.execute(
            "UPDATE items SET next_stage = ?, attempt = ?, next_attempt_at = ?, metadata = ?, "
            "updated_at = ? WHERE id = ?",
            (next_stage, attempt, next_attempt_at, json.dumps(metadata), now, item_id),
        )

    def add_event(self, item_id: str, event: str, now: float, detail: str = "") -> None:
        self.db.execute(
            "INSERT INTO events (item_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (item_id, now, event, detail or None),
        )

    # --- reads ------------------------------------------------------------

    def unfinished_items(self) -> list[ItemRow]:
        rows = self.db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items "  # noqa: S608 - constant columns and states
            f"WHERE state IN ({sql_list(UNFINISHED)}) ORDER BY id"
        ).fetchall()
        return [_row_to_item(r) for r in rows]

    def open_attempts(self, item_id: str) -> list[OpenAttempt]:
        rows = self.db.execute(
            "SELECT id, stage_index, stage, attempt FROM attempts "
            "WHERE item_id = ? AND ended_at IS NULL ORDER BY id",
            (item_id,),
        ).fetchall()
        return [OpenAttempt(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall()
        return {state: int(n) for state, n in rows}

    def item(self, item_id: str) -> ItemRow | None:
        row = self.db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?",  # noqa: S608 - constant columns
            (item_id,),
        ).fetchone()
        return _row_to_item(row) if row else None

    # --- retry: failed/ back to working/ (requeue.py) ----------------------

    def mark_requeuing(self, item_id: str, working_name: bytes, now: float) -> bool:
        """Intent to move a failed file back to working/; False if it is no longer failed."""
        cur = self.db.execute(
            f"UPDATE items SET state = '{ItemState.REQUEUING}', "  # noqa: S608 - constants
            f"working_name = ?, updated_at = ? WHERE id = ? AND state = '{ItemState.FAILED}'",
            (working_name, now, item_id),
        )
        return cur.rowcount == 1

    def mark_requeued(
        self, item_id: str, pipeline: str | None, sha256: str, size: int, ctime_ns: int, now: float
    ) -> None:
        """Back in working/: it starts its pipeline again (earlier attempts stay recorded)."""
        self.db.execute(
            f"UPDATE items SET state = '{ItemState.ACTIVE}', "  # noqa: S608 - a constant state
            "pipeline = ?, sha256 = ?, size = ?, ctime_ns = ?, next_stage = 0, attempt = 0, "
            "next_attempt_at = NULL, metadata = '{}', outcome = NULL, reason = NULL, "
            "final_dir = NULL, final_name = NULL, finished_at = NULL, "
            "updated_at = ? WHERE id = ?",
            (pipeline, sha256, size, ctime_ns, now, item_id),
        )


__all__ = ["ItemLog", "ItemRow", "OpenAttempt"]
