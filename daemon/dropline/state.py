"""The state database: SQLite, the log of dropline's intentions and of every attempt.

The folders are the truth; this is the record of what dropline meant to do
and did, so that start-up recovery can reconcile the two.  WAL with
synchronous=FULL (NORMAL can lose committed transactions on power loss), a
busy timeout, and a schema versioned by ``PRAGMA user_version``.  Writes are
grouped: callers open one ``transaction()`` per batch of files.

No SQL lives outside this module but for the read-only queries of
``state_reader.py``.  A connection is never carried across fork.
"""

from __future__ import annotations

import contextlib
import functools
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
    # 3: the operations commands.  Finished rows by age (status, prune: never a
    # full-table scan as history grows; it also serves what items_state did);
    # requests from `dropline retry` to the running daemon.
    """
    DROP INDEX items_state;
    CREATE INDEX items_state_finished ON items(state, finished_at);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,              -- retry
        item_id TEXT NOT NULL,
        requested_at REAL NOT NULL,
        done_at REAL,
        result TEXT                      -- requeued, or why not
    );
    CREATE INDEX requests_open ON requests(id) WHERE done_at IS NULL;
    """,
    # 4: no index on the name.  Names come in no order, so each claim wrote a
    # leaf page of its own into that index: with a million rows recorded, 25 us
    # per file instead of 9, growing with the history.  The name is looked up
    # only by `dropline history NAME` and `dropline retry NAME`, which now read
    # the table through (about 0.1 s per million rows).
    """
    DROP INDEX items_name;
    """,
)

# requeuing: on its way back from failed/ to working/ (`dropline retry`).
UNFINISHED = ("claiming", "active", "finishing", "requeuing")
# pruning: its files are being deleted for retention; the row goes next.
FINISHED = ("archived", "failed", "vanished")


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

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

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

    def set_claim_source(self, item_id: str, dev: int, ino: int, now: float) -> None:
        """The inode a "claiming" row's file has in working/ (recovery matches it)."""
        self._exec(
            "UPDATE items SET src_dev = ?, src_ino = ?, updated_at = ? WHERE id = ?",
            (dev, ino, now, item_id),
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
        self._insert_items(
            "id, name, working_name, src_dev, src_ino, created_at, updated_at, state",
            "?, ?, ?, ?, ?, ?, ?, 'claiming'",
            [(*row, now, now) for row in rows],
        )

    def mark_active_many(
        self, rows: list[tuple[str | None, str, int, int, str]], now: float
    ) -> None:
        """Rows of (pipeline, sha256, size, ctime_ns, id)."""
        self._update_items(
            "active",
            ("pipeline", "sha256", "size", "ctime_ns", "updated_at"),
            [(p, h, size, ct, now, item_id) for p, h, size, ct, item_id in rows],
        )

    def mark_finishing_many(self, rows: list[tuple[str, str, str, bytes, str]], now: float) -> None:
        """Rows of (outcome, reason, final_dir, final_name, id)."""
        self._update_items(
            "finishing",
            ("outcome", "reason", "final_dir", "final_name", "updated_at"),
            [(o, r or None, d, n, now, item_id) for o, r, d, n, item_id in rows],
        )

    def mark_claimed_finishing_many(
        self, rows: list[tuple[str | None, str, int, int, str, str, str, bytes, str]], now: float
    ) -> None:
        """Rows of (pipeline, sha256, size, ctime_ns, outcome, reason, final_dir,
        final_name, id): "claiming" straight to "finishing" (a file with no stage)."""
        self._update_items(
            "finishing",
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
            self._run(_insert_sql(columns, row_sql, count), chunk)

    def _update_items(
        self, state: str | None, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        """Set STATE (unless None) and COLUMNS on the rows of (*values, id)."""
        if not _UPDATE_FROM:
            sets = ", ".join(f"{c} = ?" for c in columns)
            fixed = f"state = '{state}', " if state else ""
            self._many(f"UPDATE items SET {fixed}{sets} WHERE id = ?", rows)  # noqa: S608
            return
        for chunk, count in _chunks(rows):
            self._run(_update_sql(state, columns, count), chunk)

    def _run(self, sql: str, params: list[Any]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

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
            "WHERE state IN ('claiming', 'active', 'finishing', 'requeuing') ORDER BY id"
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

    def item(self, item_id: str) -> ItemRow | None:
        row = self._exec(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?",  # noqa: S608 - constant columns
            (item_id,),
        ).fetchone()
        return _row_to_item(row) if row else None

    # --- retry: failed/ back to working/ (requeue.py) ------------------------

    def mark_requeuing(self, item_id: str, working_name: bytes, now: float) -> bool:
        """Intent to move a failed file back to working/; False if it is no longer failed."""
        cur = self._exec(
            "UPDATE items SET state = 'requeuing', working_name = ?, updated_at = ? "
            "WHERE id = ? AND state = 'failed'",
            (working_name, now, item_id),
        )
        return cur.rowcount == 1

    def mark_requeued(
        self, item_id: str, pipeline: str | None, sha256: str, size: int, ctime_ns: int, now: float
    ) -> None:
        """Back in working/: it starts its pipeline again (earlier attempts stay recorded)."""
        self._exec(
            "UPDATE items SET state = 'active', pipeline = ?, sha256 = ?, size = ?, ctime_ns = ?, "
            "next_stage = 0, attempt = 0, next_attempt_at = NULL, metadata = '{}', outcome = NULL, "
            "reason = NULL, final_dir = NULL, final_name = NULL, finished_at = NULL, "
            "updated_at = ? WHERE id = ?",
            (pipeline, sha256, size, ctime_ns, now, item_id),
        )

    # --- requests from the command line to the running daemon ---------------

    def add_requests(self, kind: str, item_ids: list[str], now: float) -> list[int]:
        ids = []
        for item_id in item_ids:
            cur = self._exec(
                "INSERT INTO requests (kind, item_id, requested_at) VALUES (?, ?, ?)",
                (kind, item_id, now),
            )
            ids.append(int(cur.lastrowid or 0))
        return ids

    def open_requests(self, limit: int, kind: str | None = None) -> list[tuple[int, str, str]]:
        """Requests not yet done (of KIND, if given), oldest first: (id, kind, item_id).

        Kinds: "retry" (item_id: the item), "reload" (item_id: the file the
        command checked; result: the daemon's verdict as JSON, see reloading.py).
        """
        if kind is None:
            sql = "SELECT id, kind, item_id FROM requests WHERE done_at IS NULL ORDER BY id LIMIT ?"
            params: tuple[Any, ...] = (limit,)
        else:
            sql = (
                "SELECT id, kind, item_id FROM requests WHERE done_at IS NULL AND kind = ? "
                "ORDER BY id LIMIT ?"
            )
            params = (kind, limit)
        rows = self._exec(sql, params).fetchall()
        return [(int(i), str(k), str(item)) for i, k, item in rows]

    def finish_requests(self, results: list[tuple[int, str]], now: float) -> None:
        """Rows of (request id, result)."""
        self._many(
            "UPDATE requests SET done_at = ?, result = ? WHERE id = ?",
            [(now, result, request_id) for request_id, result in results],
        )

    def withdraw_request(self, request_id: int, reason: str, now: float) -> bool:
        """Close a request the daemon has not done yet (its command gave up waiting);
        False if the daemon did it meanwhile (its result stands)."""
        cur = self._exec(
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
            rows = self._exec(
                f"SELECT id, result FROM requests WHERE id IN ({marks})",  # noqa: S608 - marks
                tuple(chunk),
            ).fetchall()
            out.update({int(i): r for i, r in rows})
        return out

    # --- retention (retention.py) -------------------------------------------

    def select_for_pruning(self, states: tuple[str, ...], before: float, limit: int) -> list[str]:
        """Ids of finished items older than BEFORE, oldest first."""
        marks = ",".join("?" * len(states))
        rows = self._exec(
            "SELECT id FROM items "  # noqa: S608 - marks
            f"WHERE state IN ({marks}) AND finished_at < ? ORDER BY finished_at LIMIT ?",
            (*states, before, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def prunable(self, states: tuple[str, ...], before: float) -> list[tuple[str, int, int]]:
        """(state, files, bytes) finished before BEFORE, per state (one index range each)."""
        out = []
        for state in states:
            count, size = self._exec(
                "SELECT count(*), coalesce(sum(size), 0) FROM items "
                "WHERE state = ? AND finished_at < ?",
                (state, before),
            ).fetchone()
            out.append((state, int(count), int(size)))
        return out

    def pruning_items(self, limit: int) -> list[tuple[str, str, str | None, bytes | None]]:
        """Items marked for pruning: (id, outcome, final_dir, final_name)."""
        rows = self._exec(
            "SELECT id, outcome, final_dir, final_name FROM items WHERE state = 'pruning' LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(i), str(o or ""), d, n) for i, o, d, n in rows]

    def mark_pruning(self, item_ids: list[str], states: tuple[str, ...]) -> int:
        """Claim rows for pruning (the daemon's retry only takes "failed" rows)."""
        marks = ",".join("?" * len(states))
        cur = self._db.executemany(
            "UPDATE items SET state = 'pruning', "  # noqa: S608 - marks
            "outcome = CASE WHEN state = 'vanished' THEN 'vanished' ELSE outcome END "
            f"WHERE id = ? AND state IN ({marks})",
            [(item_id, *states) for item_id in item_ids],
        )
        return int(cur.rowcount)

    def delete_pruned(self, item_ids: list[str]) -> None:
        """The rows, their attempts and events (ON DELETE CASCADE)."""
        self._many("DELETE FROM items WHERE id = ? AND state = 'pruning'", [(i,) for i in item_ids])

    def delete_old_requests(self, before: float) -> int:
        cur = self._exec(
            "DELETE FROM requests WHERE done_at IS NOT NULL AND done_at < ?", (before,)
        )
        return int(cur.rowcount)

    def checkpoint(self) -> None:
        """Copy the WAL into the database so freed pages are reused, not appended."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def acquire_lock(state_db: Path, wait: float = 0.0) -> int:
    """flock the directory that holds the state database; one daemon per state.

    Returns the descriptor, which holds the lock until it is closed (or the
    process dies, so a SIGKILL never leaves a stale lock behind).  WAIT: how
    long to keep trying (a command such as `dropline retry` holds it briefly
    while no daemon runs; a daemon starting then waits rather than fail).
    """
    import fcntl
    import os
    import time

    from .errors import StateLockedError

    directory = state_db.parent
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(fd)
            from .datalock import lock_holder

            pid = lock_holder(directory)
            who = f"pid {pid}, " if pid is not None else ""
            raise StateLockedError(
                f"another dropline is running on the state in {directory} ({who}its lock is held)"
            ) from None
        return fd
