"""Read-only access to the state database for ``dropline status`` and ``history``.

Opened with ``mode=ro``: a reader in WAL mode never blocks the daemon's
writes and the daemon never blocks it; each command reads in one short
transaction.  Every query here is served by an index (items by id, by name,
by state and finish time; attempts and events by item), so a command stays
quick however long the history grows.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datalock import lock_holder
from ..errors import StateUnavailableError
from .schema import UNFINISHED
from .search import ItemQuery, where_clause


@dataclass
class ItemView:
    """One file's row, as the commands show it."""

    id: str
    name: bytes
    pipeline: str | None
    state: str
    size: int | None
    sha256: str | None
    next_stage: int
    attempt: int
    next_attempt_at: float | None
    outcome: str | None
    reason: str | None
    final_dir: str | None
    final_name: bytes | None
    created_at: float
    updated_at: float
    finished_at: float | None
    metadata: dict[str, Any]


@dataclass
class AttemptView:
    id: int
    stage_index: int
    stage: str
    attempt: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    error: str | None
    seconds: float | None = None  # as the stage measured itself (schema 5 on)


@dataclass
class FlightCount:
    """Files in flight alike: same pipeline, state and next stage, the stage they run."""

    pipeline: str | None
    state: str
    next_stage: int
    running: str | None  # the stage running now, if one is
    retrying: bool  # waiting for a retry that is not due yet
    count: int
    oldest: float  # created_at of the oldest


@dataclass
class EventView:
    at: float
    event: str
    detail: str | None


_ITEM_SQL = (
    "SELECT id, name, pipeline, state, size, sha256, next_stage, attempt, next_attempt_at, "
    "outcome, reason, final_dir, final_name, created_at, updated_at, finished_at, metadata "
    "FROM items"
)


_ATTEMPTS_SQL = (
    "SELECT id, stage_index, stage, attempt, started_at, ended_at, outcome, error, seconds "
    "FROM attempts WHERE item_id = ? ORDER BY id"
)
# A state of schema 4 or older (its daemon not yet upgraded) has no seconds.
_ATTEMPTS_SQL_4 = _ATTEMPTS_SQL.replace(", seconds ", ", NULL ")


def _item(row: tuple[Any, ...]) -> ItemView:
    values = list(row)
    values[1] = bytes(values[1])
    if values[12] is not None:
        values[12] = bytes(values[12])
    try:
        values[16] = json.loads(values[16] or "{}")
    except ValueError:
        values[16] = {}
    return ItemView(*values)


READERS_GROUP = "dropline-readers"  # made by the installed sysusers.d file


def _denied(problem: str) -> StateUnavailableError:
    """A permission problem, and what would give access: root, or the readers' group
    where it exists (its members read the installed state through ACLs)."""
    hint = "run as root or as the user the daemon runs as"
    with contextlib.suppress(KeyError):
        group = grp.getgrnam(READERS_GROUP)
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        if group.gr_gid in (os.getegid(), *os.getgroups()):
            hint = f"run as root: the group {READERS_GROUP} has no read access to it"
        elif user in group.gr_mem:
            hint = f"{user} joined the group {READERS_GROUP} after logging in: log in again"
        else:
            hint = (
                f"run as root, or as a member of the group {READERS_GROUP}: "
                f"usermod -aG {READERS_GROUP} {user}, then log in again"
            )
    return StateUnavailableError(f"permission denied: {problem} ({hint})")


def _open_error(path: Path, exc: sqlite3.Error) -> StateUnavailableError:
    """Why SQLite could not open PATH read-only: in WAL mode it needs the -wal and -shm
    beside it, readable, or to make them where they are missing."""
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if os.path.exists(side) and not os.access(side, os.R_OK):
            return _denied(f"cannot read {side}")
    wal = path.with_name(path.name + "-wal")
    if not os.path.exists(wal) and not os.access(path.parent, os.W_OK | os.X_OK):
        return StateUnavailableError(
            f"cannot read the state database {path}: {wal.name} is missing and only "
            "the daemon's user or root may make it (start the daemon, or run as root)"
        )
    return StateUnavailableError(f"cannot read the state database {path}: {exc}")


class StateReader:
    """The state database, opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            os.stat(path)
        except FileNotFoundError:
            raise StateUnavailableError(
                f"no state database at {path} (has the daemon ever run with this "
                "configuration? check state_db)"
            ) from None
        except PermissionError:
            raise _denied(f"cannot reach the state database {path}") from None
        if not os.access(path, os.R_OK):
            raise _denied(f"cannot read the state database {path}")
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self.schema = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        if self.schema < 1:
            raise StateUnavailableError(f"{path} is not a dropline state database (schema 0)")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[StateReader]:
        """One consistent read: everything inside sees the same moment."""
        self._q("BEGIN")
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("COMMIT")

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StateUnavailableError(f"reading {self.path}: {exc}") from exc

    # --- status -------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {
            str(s): int(n) for s, n in self._q("SELECT state, count(*) FROM items GROUP BY state")
        }

    def finished_since(self, since: float) -> dict[str, int]:
        out = {}
        for state in ("archived", "failed"):
            rows = self._q(
                "SELECT count(*) FROM items WHERE state = ? AND finished_at >= ?", (state, since)
            )
            out[state] = int(rows[0][0])
        return out

    def in_flight(self, limit: int) -> list[tuple[ItemView, AttemptView | None]]:
        """Unfinished items, those running a stage first, then the oldest first, each
        with its stage attempt now running (if any)."""
        marks = ",".join("?" * len(UNFINISHED))
        rows = self._q(
            f"{_ITEM_SQL} WHERE state IN ({marks}) ORDER BY EXISTS (SELECT 1 FROM attempts a "  # noqa: S608 - marks
            "WHERE a.item_id = items.id AND a.ended_at IS NULL) DESC, created_at LIMIT ?",
            (*UNFINISHED, limit),
        )
        out = []
        for row in rows:
            item = _item(row)
            running = [a for a in self.attempts(item.id) if a.ended_at is None]
            out.append((item, running[-1] if running else None))
        return out

    def in_flight_counts(self, now: float) -> list[FlightCount]:
        """The unfinished items counted by pipeline, state, next stage, the stage
        running and whether a retry is not due yet (``dropline status``'s groups)."""
        marks = ",".join("?" * len(UNFINISHED))
        rows = self._q(
            "SELECT pipeline, state, next_stage, (SELECT stage FROM attempts a "  # noqa: S608 - marks
            "WHERE a.item_id = items.id AND a.ended_at IS NULL ORDER BY a.id DESC LIMIT 1), "
            "coalesce(next_attempt_at > ?, 0), count(*), min(created_at) "
            f"FROM items WHERE state IN ({marks}) GROUP BY 1, 2, 3, 4, 5",
            (now, *UNFINISHED),
        )
        return [
            FlightCount(p, st, int(n), run, bool(r), int(c), float(o))
            for p, st, n, run, r, c, o in rows
        ]

    def ended_by_pipeline(self, since: float) -> dict[tuple[str | None, str], int]:
        """Files that ended since SINCE, by (pipeline, how): an index range, however
        long the history."""
        rows = self._q(
            "SELECT pipeline, state, count(*) FROM items WHERE state IN "
            "('archived', 'failed', 'vanished') AND finished_at >= ? GROUP BY 1, 2",
            (since,),
        )
        return {(p, str(st)): int(n) for p, st, n in rows}

    def attempts_started(self, since: float, lookback: int) -> dict[tuple[str | None, str], int]:
        """Stage attempts started since SINCE, by (pipeline, stage), among the last
        LOOKBACK attempts written (the table's end: a bounded read, however long the
        history; beyond LOOKBACK within the window, the count stops there)."""
        rows = self._q(
            "SELECT i.pipeline, a.stage, count(*) FROM attempts a JOIN items i "
            "ON i.id = a.item_id WHERE a.id > (SELECT coalesce(max(id), 0) FROM attempts) - ? "
            "AND a.started_at >= ? GROUP BY 1, 2",
            (lookback, since),
        )
        return {(p, str(stage)): int(n) for p, stage, n in rows}

    def recent_failures(self, limit: int) -> list[ItemView]:
        rows = self._q(
            f"{_ITEM_SQL} WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        )
        return [_item(r) for r in rows]

    # --- history ------------------------------------------------------------

    def item(self, item_id: str) -> ItemView | None:
        rows = self._q(f"{_ITEM_SQL} WHERE id = ?", (item_id,))
        return _item(rows[0]) if rows else None

    def search(self, query: ItemQuery, limit: int, offset: int = 0) -> list[ItemView]:
        """The items QUERY asks for, newest first, LIMIT of them after OFFSET.

        Newest first is the table's own order (rows are written as files are
        claimed): the rows are read from the end and the reading stops once
        LIMIT are found, with no sort.  A name or a glob reads the items
        through where it must (no index on names: see the README).
        """
        where, params = where_clause(query)
        sql = _ITEM_SQL + (" WHERE " + where if where else "")
        rows = self._q(f"{sql} ORDER BY rowid DESC LIMIT ? OFFSET ?", (*params, limit, offset))
        return [_item(r) for r in rows]

    def items_named(self, name: bytes) -> list[ItemView]:
        """Every item of that name in incoming/, newest first."""
        rows = self._q(
            f"{_ITEM_SQL} WHERE name = ? ORDER BY created_at DESC, id DESC",
            (name,),
        )
        return [_item(r) for r in rows]

    def attempts(self, item_id: str) -> list[AttemptView]:
        sql = _ATTEMPTS_SQL if self.schema >= 5 else _ATTEMPTS_SQL_4
        rows = self._q(sql, (item_id,))
        return [AttemptView(*r) for r in rows]

    def events(self, item_id: str) -> list[EventView]:
        rows = self._q(
            "SELECT at, event, detail FROM events WHERE item_id = ? ORDER BY id", (item_id,)
        )
        return [EventView(*r) for r in rows]

    def failed_ids(self, since: float | None, pipeline: str | None) -> list[str]:
        sql = "SELECT id FROM items WHERE state = 'failed' AND finished_at >= ?"
        params: list[Any] = [since or 0.0]
        if pipeline is not None:
            sql += " AND pipeline = ?"
            params.append(pipeline)
        return [str(r[0]) for r in self._q(sql + " ORDER BY finished_at", tuple(params))]


def paused_pipelines(reader: StateReader) -> dict[str, tuple[float, str]]:
    """The pipelines paused (``dropline pause``): (since, reason) each; none before
    schema 7."""
    if reader.schema < 7:
        return {}
    rows = reader._q("SELECT pipeline, since, reason FROM pauses")
    return {str(p): (float(since), str(reason or "")) for p, since, reason in rows}


def held_pipelines(reader: StateReader) -> dict[str, tuple[str, float, str]]:
    """The pipelines their breaker holds: (stage, since, reason) each; none before
    schema 8."""
    if reader.schema < 8:
        return {}
    rows = reader._q("SELECT pipeline, stage, since, reason FROM holds")
    return {str(p): (str(stage), float(since), str(why)) for p, stage, since, why in rows}


def daemon_pid(state_db: Path) -> int | None:
    """The pid holding the daemon's lock on the state directory, or None."""
    return lock_holder(state_db.parent)


__all__ = [
    "AttemptView",
    "EventView",
    "FlightCount",
    "ItemView",
    "StateReader",
    "daemon_pid",
    "held_pipelines",
    "paused_pipelines",
]
