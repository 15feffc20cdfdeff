"""``builtin: sqlite-load``: the rows of a CSV file into an SQLite table.

Idempotent per item: in one transaction it deletes the rows an earlier run
loaded for this item (column ``dropline_item``), then inserts the file's
rows.  Run again for the same item (a retry, or after a crash in the middle
of a load, whose transaction SQLite rolled back), the table ends with
exactly one copy of them.  The table is created when absent, its columns
from the header with the types validate-csv recorded (integer, decimal,
date; text otherwise), plus ``dropline_item`` with an index.

Rows are streamed into ``executemany``: memory does not grow with the file.
Each worker thread holds its connection across files (``held``), reopened
after an error and when the database file was replaced or removed.
The target database is the operator's, never dropline's own state.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.keys import key
from ..config.source import Loc
from ..config.values import AbsolutePath, Duration, Flag, Identifier, Text, sql_identifier
from ..errors import PermanentError
from . import StageContext, StageFunc
from .builtin import BuildEnv
from .csvdata import Source, open_source, schema_types, sql_type
from .held import Held

ITEM_COLUMN = "dropline_item"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Options:
    database: Path = key(AbsolutePath("the SQLite file to load into (absolute)"))
    table: str = key(Identifier())
    create: bool = key(Flag(), default=True)
    delimiter: str | None = key(Text("one character (default: as validated)"), default=None)
    encoding: str | None = key(Text("a text encoding (default: as validated)"), default=None)
    busy_timeout: float = key(Duration(positive=False), default=30.0)


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    if not opts.database.parent.is_dir():
        at.fail("database", f"its folder {opts.database.parent} does not exist")
    return _SqliteLoad(opts)


@dataclass
class _Db:
    conn: sqlite3.Connection
    identity: tuple[int, int] | None  # (st_dev, st_ino) of the database file when opened


def _identity(database: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(database)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _connect(database: Path, busy: float) -> _Db:
    conn = sqlite3.connect(str(database), timeout=busy, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
    return _Db(conn, _identity(database))


def _close(db: _Db) -> None:
    db.conn.close()


class _SqliteLoad:
    """The stage: each worker thread holds its connection to the database across files."""

    def __init__(self, opts: Options) -> None:
        self.database, self.table, self.create = opts.database, opts.table, opts.create
        self.delimiter, self.encoding, self.busy = opts.delimiter, opts.encoding, opts.busy_timeout
        # Not a bound method: a cycle through the stage would leave the
        # connection to the garbage collector rather than closing it.
        self.held: Held[_Db] = Held(functools.partial(_connect, self.database, self.busy), _close)

    def _db(self) -> _Db:
        """The held connection, unless the database file was replaced or removed since."""
        db, fresh = self.held.get()
        if not fresh and db.identity != _identity(self.database):
            # Writing through the old one would load rows into a file nobody reads.
            self.held.drop()
            db, _ = self.held.get()
        return db

    def _begin(self) -> sqlite3.Connection:
        """The held connection, in a new write transaction (BEGIN IMMEDIATE)."""
        for again in (False, True):
            db = self._db().conn
            try:
                db.execute("BEGIN IMMEDIATE")
                return db
            except sqlite3.ProgrammingError:
                self.held.drop()  # a connection closed under it: once more on a new one
                if again:
                    raise
            except BaseException:
                self.held.drop()
                raise
        raise AssertionError("unreachable")

    def __call__(self, ctx: StageContext) -> Mapping[str, Any]:
        table = self.table
        with open_source(ctx.data_file(), ctx.metadata, self.delimiter, self.encoding) as source:
            bad = [h for h in source.header if not sql_identifier(h) or h == ITEM_COLUMN]
            if bad:
                raise PermanentError(
                    f'column "{bad[0]}" cannot be a column of {table}: use letters, digits '
                    "and _ (a transform can rename it)"
                )
            if ctx.rehearsal and not os.path.lexists(self.database):
                # `dropline try`: connecting would create the file (as the one
                # trying, maybe root): the load is rehearsed on an empty database.
                loaded = self._rehearse_new(ctx, source)
                would = f"create {self.database} and load {loaded} rows into {table}"
                return {"loaded_rows": loaded, "table": table, "would": would}
            db = self._begin()
            try:
                loaded = self._load(db, ctx, source)
            except PermanentError:
                raise  # rolled back; the connection is sound
            except BaseException:
                self.held.drop()
                raise
        if ctx.rehearsal:
            would = f"load {loaded} rows into {table}: loaded, then rolled back"
            return {"loaded_rows": loaded, "table": table, "would": would}
        return {"loaded_rows": loaded, "table": table}

    def _rehearse_new(self, ctx: StageContext, source: Source) -> int:
        db = sqlite3.connect(":memory:", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            return self._load(db, ctx, source)  # rolled back: it is a rehearsal
        finally:
            db.close()

    def _load(self, db: sqlite3.Connection, ctx: StageContext, source: Source) -> int:
        """Replace the rows of CTX's item in the transaction begun, and commit; the rows loaded."""
        table, header = self.table, source.header
        try:
            if self.create:
                _create(db, table, header, schema_types(ctx.metadata))
            existing = {r[1] for r in db.execute(f"PRAGMA table_info({_quote(table)})")}
            if not existing:
                raise PermanentError(f"table {table} does not exist (create: false)")
            missing = [c for c in [*header, ITEM_COLUMN] if c not in existing]
            if missing:
                raise PermanentError(f'table {table} has no column "{missing[0]}"')
            db.execute(
                f"DELETE FROM {_quote(table)} WHERE {ITEM_COLUMN} = ?",  # noqa: S608
                (ctx.item_id,),
            )
            columns = ", ".join(_quote(c) for c in [*header, ITEM_COLUMN])
            marks = ", ".join("?" * (len(header) + 1))
            item = ctx.item_id
            cursor = db.executemany(
                f"INSERT INTO {_quote(table)} ({columns}) VALUES ({marks})",  # noqa: S608
                source.rows(item),
            )
            loaded = cursor.rowcount
            # `dropline try`: everything done, the table's checks passed, nothing kept.
            db.execute("ROLLBACK" if ctx.rehearsal else "COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise PermanentError(f"{table}: {exc}") from None
        except PermanentError:
            db.execute("ROLLBACK")
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return loaded


def _create(db: sqlite3.Connection, table: str, header: list[str], types: dict[str, str]) -> None:
    columns = [f"{_quote(h)} {sql_type(types.get(h, 'text'), 'sqlite')}" for h in header]
    columns.append(f"{ITEM_COLUMN} TEXT NOT NULL")
    db.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table)} ({', '.join(columns)})")
    db.execute(
        f"CREATE INDEX IF NOT EXISTS {_quote(table + '_' + ITEM_COLUMN)} "
        f"ON {_quote(table)} ({ITEM_COLUMN})"
    )


__all__ = ["ITEM_COLUMN", "build"]
