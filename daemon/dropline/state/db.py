"""The state database's connection: PRAGMAs, migrations, transactions, the lock.

WAL with synchronous=FULL (NORMAL can lose committed transactions on power
loss), a busy timeout, and a schema versioned by ``PRAGMA user_version``.
Writes are grouped: callers open one ``transaction()`` per batch of files.

A transaction may be declared not durable (``durable=False``): committed
with synchronous=NORMAL, written to the WAL but not fsync'd.  A crash of the
process (kill -9) loses none of it, since the WAL is in the kernel's hands at
COMMIT; a power loss may lose a tail of such transactions, never one before
a durable commit, because the WAL is appended in order and each durable
COMMIT fsyncs all of it.  The stage bookkeeping of idempotent stages is
committed so: what a power loss takes back, the stage runs again.  So is
the result of a claim or of a move to the file's end: the renames it
records are on disk, and what a power loss takes back leaves the intent
before it ("claiming", "finishing"), which recovery completes.
This module knows no table but through ``MIGRATIONS``; the item log, the
requests and pruning put their SQL through it.  A connection is never carried
across fork.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..crashpoints import fault
from ..errors import FatalIOError
from .schema import MIGRATIONS


def _fatal(exc: sqlite3.Error) -> FatalIOError:
    return FatalIOError(f"state database: {exc}")


class Database:
    """One SQLite database file, owned by the daemon's main loop (or one command)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.connection = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
            self.connection.execute("PRAGMA busy_timeout = 5000")
            mode = self.connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise FatalIOError(f"state database {path}: cannot use WAL (got {mode})")
            self.connection.execute("PRAGMA synchronous = FULL")
            self.connection.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise FatalIOError(f"state database {path}: {exc}") from exc
        self._in_tx = False

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.connection.close()

    @property
    def schema_version(self) -> int:
        return int(self.connection.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise FatalIOError(
                f"state database {self.path} has schema {version}, newer than this dropline "
                f"understands ({len(MIGRATIONS)}): upgrade dropline"
            )
        for number in range(version, len(MIGRATIONS)):
            self.connection.execute("BEGIN IMMEDIATE")
            if self.schema_version > number:
                # Another process (a command beside the daemon starting) migrated it
                # between our reading of the version and our lock: read again.
                self.connection.execute("COMMIT")
                continue
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    self.connection.execute(statement)
            self.connection.execute(f"PRAGMA user_version = {number + 1}")
            self.connection.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Database]:
        """One atomic group of writes: BEGIN IMMEDIATE ... COMMIT, fsync'd at
        COMMIT unless DURABLE is False (see the module's docstring)."""
        if self._in_tx:
            raise RuntimeError("nested transaction")
        try:
            if not durable:  # FULL again after the COMMIT: any other write is durable
                self.connection.execute("PRAGMA synchronous = NORMAL")
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc
        self._in_tx = True
        try:
            yield self
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")
            raise
        else:
            try:
                fault("state.commit")
                self.connection.execute("COMMIT")
            except OSError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self.connection.execute("ROLLBACK")
                raise FatalIOError(f"state database: commit failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise _fatal(exc) from exc
        finally:
            self._in_tx = False
            if not durable:
                with contextlib.suppress(sqlite3.Error):
                    self.connection.execute("PRAGMA synchronous = FULL")

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    @contextlib.contextmanager
    def joined(self) -> Iterator[Database]:
        """The transaction open now, whose owner commits it; else one of its own."""
        if self._in_tx:
            yield self
        else:
            with self.transaction():
                yield self

    # The helpers below turn any SQLite error into FatalIOError (the daemon stops
    # rather than go on with a database it cannot trust); an IntegrityError stays
    # itself for execute(), whose callers may expect one.

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

    def run(self, sql: str, params: list[Any]) -> None:
        try:
            self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            self.connection.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _fatal(exc) from exc

    def checkpoint(self) -> None:
        """Copy the WAL into the database so freed pages are reused, not appended."""
        with contextlib.suppress(sqlite3.Error):
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")


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

    from ..errors import StateLockedError

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
            from ..datalock import lock_holder

            pid = lock_holder(directory)
            who = f"pid {pid}, " if pid is not None else ""
            raise StateLockedError(
                f"another dropline is running on the state in {directory} ({who}its lock is held)"
            ) from None
        return fd


__all__ = ["Database", "acquire_lock"]
