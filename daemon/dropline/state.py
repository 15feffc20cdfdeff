"""The state database: SQLite, the log of dropline's intentions and of every attempt.

The folders are the truth; this is the record of what dropline meant to do
and did, so that start-up recovery can reconcile the two.  WAL with
synchronous=FULL (NORMAL can lose committed transactions on power loss), a
busy timeout, and a schema versioned by ``PRAGMA user_version``.  Writes are
grouped: callers open one ``transaction()`` per batch of files.

No SQL lives outside this module.  A connection is never carried across fork.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .crashpoints import fault
from .errors import FatalIOError

# Each entry takes the schema from version N to N+1.  Never edit a shipped
# entry; append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        name BLOB NOT NULL,              -- its name in incoming/ (bytes: need not be UTF-8)
        working_name BLOB NOT NULL,      -- its name in working/
        pipeline TEXT,                   -- NULL until routed, or when no pipeline matched
        state TEXT NOT NULL,             -- claiming, active, finishing, archived, failed, vanished
        size INTEGER,
        sha256 TEXT,
        src_dev INTEGER,
        src_ino INTEGER,
        next_stage INTEGER NOT NULL DEFAULT 0,   -- stages completed so far
        attempt INTEGER NOT NULL DEFAULT 0,      -- failed attempts of next_stage so far
        next_attempt_at REAL,                    -- when a retry is due (epoch seconds)
        metadata TEXT NOT NULL DEFAULT '{}',     -- JSON from earlier stages
        outcome TEXT,                    -- archived or failed, once decided
        reason TEXT,                     -- why it failed
        final_dir TEXT,                  -- '' or a date folder under archive/
        final_name BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX items_state ON items(state);
    CREATE INDEX items_name ON items(name);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        stage_index INTEGER NOT NULL,
        stage TEXT NOT NULL,
        attempt INTEGER NOT NULL,        -- 1 + the failed attempts before it
        started_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT,                    -- succeeded, retrying, failed, interrupted, indeterminate
        error TEXT
    );
    CREATE INDEX attempts_item ON attempts(item_id);
    -- Notable events beyond a file's ordinary life (recovery, vanished files):
    -- the claim and the end are in items, every stage attempt in attempts.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_item ON events(item_id);
    """,
    # 2: the change time recorded with the size after the claim, to notice a writer
    # that kept the file open (its owner can set mtime back, never ctime).
    """
    ALTER TABLE items ADD COLUMN ctime_ns INTEGER;
    """,
)

UNFINISHED = ("claiming", "active", "finishing")


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
    final_dir: str | None
    final_name: bytes | None
    created_at: float
    ctime_ns: int | None


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
    "ctime_ns"
)


def _row_to_item(row: tuple[Any, ...]) -> ItemRow:
    values = list(row)
    values[12] = json.loads(values[12] or "{}")
    return ItemRow(*values)


def _fatal(exc: sqlite3.Error) -> FatalIOError:
    return FatalIOError(f"state database: {exc}")


class State:
    """One SQLite database file, owned by the daemon's main loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA busy_timeout = 5000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise FatalIOError(f"state database {path}: cannot use WAL (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise FatalIOError(f"state database {path}: {exc}") from exc
        self._in_tx = False

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise FatalIOError(
                f"state database {self.path} has schema {version}, newer than this dropline "
                f"understands ({len(MIGRATIONS)}): upgrade dropline"
            )
        for number in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {number + 1}")
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """One atomic, durable group of writes: BEGIN IMMEDIATE ... COMMIT."""
        if self._in_tx:
            raise RuntimeError("nested transaction")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc
        self._in_tx = True
        try:
            yield self
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        else:
            try:
                fault("state.commit")
                self._db.execute("COMMIT")
            except OSError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise FatalIOError(f"state database: commit failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise _fatal(exc) from exc
        finally:
            self._in_tx = False

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

    # --- writes (inside transaction()) ------------------------------------

    def insert_claiming(
        self, item_id: str, name: bytes, working_name: bytes, dev: int, ino: int, now: float
    ) -> None:
        self._exec(
            "INSERT INTO items (id, name, working_name, state, src_dev, src_ino, created_at, "
            "updated_at) VALUES (?, ?, ?, 'claiming', ?, ?, ?, ?)",
            (item_id, name, working_name, dev, ino, now, now),
        )

    def mark_active(
        self,
        item_id: str,
        pipeline: str | None,
        sha256: str,
        size: int,
        ctime_ns: int,
        now: float,
    ) -> None:
        self._exec(
            "UPDATE items SET state = 'active', pipeline = ?, sha256 = ?, size = ?, "
            "ctime_ns = ?, updated_at = ? WHERE id = ?",
            (pipeline, sha256, size, ctime_ns, now, item_id),
        )

    def set_fingerprint(self, item_id: str, size: int, ctime_ns: int, now: float) -> None:
        """The working file as a stage left it (a stage may rewrite it on purpose)."""
        self._exec(
            "UPDATE items SET size = ?, ctime_ns = ?, updated_at = ? WHERE id = ?",
            (size, ctime_ns, now, item_id),
        )

    # Batch forms: one executemany per batch of files (group commit's other half).

    def insert_claiming_many(
        self, rows: list[tuple[str, bytes, bytes, int, int]], now: float
    ) -> None:
        """Rows of (id, name, working_name, dev, ino)."""
        self._many(
            "INSERT INTO items (id, name, working_name, state, src_dev, src_ino, created_at, "
            "updated_at) VALUES (?, ?, ?, 'claiming', ?, ?, ?, ?)",
            [(*row, now, now) for row in rows],
        )

    def mark_active_many(
        self, rows: list[tuple[str | None, str, int, int, str]], now: float
    ) -> None:
        """Rows of (pipeline, sha256, size, ctime_ns, id)."""
        self._many(
            "UPDATE items SET state = 'active', pipeline = ?, sha256 = ?, size = ?, "
            "ctime_ns = ?, updated_at = ? WHERE id = ?",
            [(p, h, size, ct, now, item_id) for p, h, size, ct, item_id in rows],
        )

    def mark_finishing_many(self, rows: list[tuple[str, str, str, bytes, str]], now: float) -> None:
        """Rows of (outcome, reason, final_dir, final_name, id)."""
        self._many(
            "UPDATE items SET state = 'finishing', outcome = ?, reason = ?, final_dir = ?, "
            "final_name = ?, updated_at = ? WHERE id = ?",
            [(o, r or None, d, n, now, item_id) for o, r, d, n, item_id in rows],
        )

    def mark_finished_many(self, rows: list[tuple[str, str]], now: float) -> None:
        """Rows of (state, id)."""
        self._many(
            "UPDATE items SET state = ?, finished_at = ?, updated_at = ? WHERE id = ?",
            [(st, now, now, item_id) for st, item_id in rows],
        )

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

    def delete_item(self, item_id: str) -> None:
        self._exec("DELETE FROM items WHERE id = ?", (item_id,))

    def record_stage_start(
        self, item_id: str, stage_index: int, stage: str, attempt: int, now: float
    ) -> int:
        """Record that a stage is about to run; returns the attempt's row id."""
        cur = self._exec(
            "INSERT INTO attempts (item_id, stage_index, stage, attempt, started_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (item_id, stage_index, stage, attempt, now),
        )
        return int(cur.lastrowid or 0)

    def record_stage_end(self, attempt_id: int, outcome: str, error: str, now: float) -> None:
        self._exec(
            "UPDATE attempts SET ended_at = ?, outcome = ?, error = ? WHERE id = ?",
            (now, outcome, error or None, attempt_id),
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
        self._exec(
            "UPDATE items SET next_stage = ?, attempt = ?, next_attempt_at = ?, metadata = ?, "
            "updated_at = ? WHERE id = ?",
            (next_stage, attempt, next_attempt_at, json.dumps(metadata), now, item_id),
        )

    def mark_finishing(
        self,
        item_id: str,
        outcome: str,
        reason: str,
        final_dir: str,
        final_name: bytes,
        now: float,
    ) -> None:
        self._exec(
            "UPDATE items SET state = 'finishing', outcome = ?, reason = ?, final_dir = ?, "
            "final_name = ?, updated_at = ? WHERE id = ?",
            (outcome, reason or None, final_dir, final_name, now, item_id),
        )

    def mark_finished(self, item_id: str, state: str, now: float) -> None:
        self._exec(
            "UPDATE items SET state = ?, finished_at = ?, updated_at = ? WHERE id = ?",
            (state, now, now, item_id),
        )

    def add_event(self, item_id: str, event: str, now: float, detail: str = "") -> None:
        self._exec(
            "INSERT INTO events (item_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (item_id, now, event, detail or None),
        )

    # --- reads ------------------------------------------------------------

    def unfinished_items(self) -> list[ItemRow]:
        rows = self._exec(
            f"SELECT {_ITEM_COLUMNS} FROM items "  # noqa: S608 - a constant column list
            "WHERE state IN ('claiming', 'active', 'finishing') ORDER BY id"
        ).fetchall()
        return [_row_to_item(r) for r in rows]

    def open_attempts(self, item_id: str) -> list[OpenAttempt]:
        rows = self._exec(
            "SELECT id, stage_index, stage, attempt FROM attempts "
            "WHERE item_id = ? AND ended_at IS NULL ORDER BY id",
            (item_id,),
        ).fetchall()
        return [OpenAttempt(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._exec("SELECT state, count(*) FROM items GROUP BY state").fetchall()
        return {state: int(n) for state, n in rows}


def acquire_lock(state_db: Path) -> int:
    """flock the directory that holds the state database; one daemon per state.

    Returns the descriptor, which holds the lock until it is closed (or the
    process dies, so a SIGKILL never leaves a stale lock behind).
    """
    import fcntl
    import os

    from .errors import StateLockedError

    directory = state_db.parent
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLockedError(
            f"another dropline is running on the state in {directory} (its lock is held)"
        ) from None
    return fd
