"""postgres-load: load a CSV file's rows into a PostgreSQL table, once per item.

Every row loaded carries the item's id in the column ``dropline_item``.  One
transaction deletes the rows of this item (a retry, or a re-run after a crash
between the commit and its record) and copies the file in with COPY, rows
streamed from the file: memory stays bounded whatever its size.  Each worker
thread holds its connection across files; one the server ended in between
is replaced at the next file.  So loading
an item twice leaves its rows once.

A row PostgreSQL refuses (a value of the wrong type, a constraint) fails the
file at once (PermanentError naming the line); a server that cannot be
reached, a timeout or a lost connection is retried.

psycopg is imported when a pipeline uses this builtin, not before: the
daemon runs without it otherwise.
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.keys import key
from ..config.source import Loc
from ..config.values import Duration, Flag, Text, sql_identifier
from ..credentials import CredentialError, read_credential
from ..errors import PermanentError
from . import StageContext, StageFunc, csvdata
from .held import Held
from .postgres_table import ITEM_COLUMN, check_columns, checked_header, create_table, index_name

if TYPE_CHECKING:
    import psycopg
    import psycopg.sql

    from .builtin import BuildEnv

_CANCEL_EVERY = 4096  # rows between two looks at the cancel event
# PostgreSQL's context of an error in COPY: 'COPY orders, line 3, column amount: "x"'.
_COPY_LINE = re.compile(r"\bCOPY \S+, line (\d+)")


@dataclass(frozen=True, kw_only=True)
class Options:
    dsn: str | None = key(Text("a libpq connection string"), default=None)
    dsn_env: str | None = key(Text("the name of an environment variable"), default=None)
    dsn_credential: str | None = key(
        Text("the name of a credential (LoadCredential=)"), default=None
    )
    table: str = key(Text('a table name ("orders" or "schema.orders")'))
    create: bool = key(Flag(), default=True)
    delimiter: str | None = key(Text("a one-character delimiter"), default=None)
    encoding: str | None = key(Text("an encoding name such as utf-8"), default=None)
    # None: not written (the connection string's own connect_timeout, else 10s)
    connect_timeout: float | None = key(Duration(positive=True), default=None)


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    """The stage: options dsn | dsn_env, table, create, delimiter, encoding, connect_timeout."""
    dsn_key, dsn = _dsn(opts, at)
    table = opts.table
    parts = table.split(".")
    if len(parts) > 2 or not all(sql_identifier(p) for p in parts):
        at.fail(
            "table",
            f'expected a table name, "table" or "schema.table", each part letters, digits '
            f'and _ not starting with a digit, got "{table}"',
        )
    create, delimiter = opts.create, opts.delimiter
    if delimiter is not None and len(delimiter) != 1:
        at.fail("delimiter", f'expected a single character, got "{delimiter}"')
    encoding = opts.encoding
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            at.fail("encoding", f'unknown encoding "{encoding}"')
    timeout_given = opts.connect_timeout is not None
    connect_timeout = 10.0 if opts.connect_timeout is None else opts.connect_timeout

    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        at.fail(
            dsn_key,
            "postgres-load needs the Python package psycopg (version 3), which is not "
            "installed in dropline's environment: pip install 'psycopg[binary]'",
        )
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        if dsn_key != "dsn":  # its text may hold a password: not repeated
            where = "the variable" if dsn_key == "dsn_env" else "the credential"
            at.fail(dsn_key, f"{where} does not hold a valid libpq connection string")
        at.fail(dsn_key, f"not a valid libpq connection string: {exc}")
    params: dict[str, Any] = {}
    if timeout_given or "connect_timeout" not in given:
        params["connect_timeout"] = max(1, math.ceil(connect_timeout))
    if "application_name" not in given:
        params["application_name"] = "dropline"

    loader = _Loader(dsn, params, table, parts, create, delimiter, encoding)

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        loaded = loader.load(ctx)
        if ctx.rehearsal:
            would = f"load {loaded} rows into {table}: loaded, then rolled back"
            return {"loaded_rows": loaded, "table": table, "would": would}
        return {"loaded_rows": loaded, "table": table}

    return stage


def _dsn(opts: Options, at: Loc) -> tuple[str, str]:
    """(the option it came from, the connection string): dsn, dsn_env naming a variable,
    or dsn_credential naming a credential the unit passes (``credentials.py``)."""
    inline, variable, credential = opts.dsn, opts.dsn_env, opts.dsn_credential
    given = [
        k
        for k, v in (("dsn", inline), ("dsn_env", variable), ("dsn_credential", credential))
        if v is not None
    ]
    if len(given) > 1:
        which = f"{given[0]} or {given[1]}, not both" if len(given) == 2 else "one, not three"
        at.fail(given[1], f"give {which}")
    if inline is not None:
        return "dsn", inline
    if credential is not None:
        try:
            return "dsn_credential", read_credential(credential)
        except CredentialError as exc:
            at.fail("dsn_credential", str(exc))
    if variable is None:
        at.fail(
            "dsn",
            'missing required key "dsn": a libpq connection string such as '
            '"host=db.example port=5432 dbname=reports user=dropline" '
            "(or dsn_credential: the name of a credential holding it, or dsn_env: "
            "the name of an environment variable)",
        )
    value = os.environ.get(variable, "")
    if not value:
        at.fail("dsn_env", f"the environment variable {variable} is not set or empty")
    return "dsn_env", value


def _connect(dsn: str, params: dict[str, Any]) -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, **params)


def _close(conn: psycopg.Connection[Any]) -> None:
    conn.close()


class _Loader:
    """Connects, creates the table if asked, and loads one item in one transaction.

    One per stage, shared by the worker threads: each thread holds its own
    connection across files (``held``), dropped after an error.
    """

    def __init__(
        self,
        dsn: str,
        params: dict[str, Any],
        table: str,
        parts: list[str],
        create: bool,
        delimiter: str | None,
        encoding: str | None,
    ) -> None:
        from psycopg import sql

        self.dsn = dsn
        self.params = params
        self.table = table
        self.target = sql.Identifier(*parts)
        self.create = create
        self.index = index_name(parts[-1])
        self.delimiter = delimiter
        self.encoding = encoding
        # Not a bound method: a cycle through the loader would leave the
        # connection to the garbage collector, which closes it with a warning.
        self.held: Held[psycopg.Connection[Any]] = Held(
            functools.partial(_connect, dsn, params), _close
        )

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """This thread's connection, idle and not known to be broken; whether it is new."""
        from psycopg.pq import TransactionStatus

        conn, fresh = self.held.get()
        if not fresh and (
            conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE
        ):
            self.held.drop()
            conn, fresh = self.held.get()
        return conn, fresh

    def load(self, ctx: StageContext) -> int:
        """Replace the rows of item CTX.item_id in the table by the file's; the rows loaded."""
        import psycopg

        path = ctx.data_file()
        sent = [0]
        with csvdata.open_source(path, ctx.metadata, self.delimiter, self.encoding) as source:
            columns = checked_header(source.header)
            for again in (False, True):
                conn, fresh = self._connection()
                try:
                    load = self._rehearse if ctx.rehearsal else self._load
                    loaded, replaced = load(conn, ctx, columns, source, sent)
                    break
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    # Refused rows: the transaction rolled back, the connection is sound.
                    message = _refused(
                        exc, path, ctx.metadata, self.delimiter, self.encoding, sent[0]
                    )
                    raise PermanentError(message) from None
                except psycopg.OperationalError:
                    self.held.drop()
                    # A held connection the server ended between two files (a restart,
                    # an idle timeout) shows only now: once more on a new one, which
                    # is safe as nothing of the file was sent and the load is idempotent.
                    if fresh or again or sent[0] > 0 or not conn.broken:
                        raise
                except BaseException:
                    self.held.drop()
                    raise
        if replaced > 0 and ctx.log is not None:
            ctx.log.info("postgres.replaced", table=self.table, rows=replaced)
        return loaded

    def _rehearse(
        self,
        conn: psycopg.Connection[Any],
        ctx: StageContext,
        columns: list[str],
        source: csvdata.Source,
        sent: list[int],
    ) -> tuple[int, int]:
        """``dropline try``: the whole load (the table created if need be, the
        rows copied and checked by the server) in one transaction rolled back."""
        import psycopg

        with conn.transaction() as outer:
            done = self._load(conn, ctx, columns, source, sent)
            raise psycopg.Rollback(outer)
        return done

    def _load(
        self,
        conn: psycopg.Connection[Any],
        ctx: StageContext,
        columns: list[str],
        source: csvdata.Source,
        sent: list[int],
    ) -> tuple[int, int]:
        """One transaction: the earlier rows of the item deleted, the file copied in."""
        if self.create:
            create_table(conn, self.target, self.index, columns, csvdata.schema_types(ctx.metadata))
        check_columns(conn, self.target, self.table, self.create, columns)
        with conn.transaction(), conn.cursor() as cur:
            if ctx.timeout > 0:  # the server gives up when the daemon would
                ms = max(1, math.ceil(ctx.timeout * 1000))
                cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(ms),))
            cur.execute(self._delete_sql(), (ctx.item_id,))
            replaced = cur.rowcount
            cancel = ctx.cancel
            item = ctx.item_id
            with cur.copy(self._copy_sql(columns)) as copy:
                for row in source.rows(item):
                    sent[0] += 1
                    copy.write_row(row)
                    if sent[0] % _CANCEL_EVERY == 0 and cancel and cancel.is_set():
                        raise RuntimeError("the daemon is stopping: load rolled back")
            loaded = cur.rowcount if cur.rowcount >= 0 else sent[0]
        return loaded, replaced

    def _copy_sql(self, columns: list[str]) -> psycopg.sql.Composed:
        from psycopg import sql

        names = [sql.Identifier(c) for c in [*columns, ITEM_COLUMN]]
        return sql.SQL("COPY {} ({}) FROM STDIN").format(self.target, sql.SQL(", ").join(names))

    def _delete_sql(self) -> psycopg.sql.Composed:
        from psycopg import sql

        return sql.SQL("DELETE FROM {} WHERE {} = %s").format(
            self.target, sql.Identifier(ITEM_COLUMN)
        )


def _refused(
    exc: Exception,
    path: Path,
    metadata: Mapping[str, Any],
    delimiter: str | None,
    encoding: str | None,
    sent: int,
) -> str:
    """Why PostgreSQL (or psycopg) refused a row, with the row's line in the file."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip()
    context = getattr(diag, "context", None) or ""
    found = _COPY_LINE.search(context)
    # COPY counts the rows it was sent; psycopg's own refusals come at the row being sent.
    row = int(found.group(1)) if found else sent
    where = context.strip().splitlines()[0] if context.strip() else ""
    message = f"{primary} ({where})" if where else primary
    line = _line_of_row(path, metadata, delimiter, encoding, row) if row > 0 else None
    return f"line {line}: {message}" if line else message


def _line_of_row(
    path: Path,
    metadata: Mapping[str, Any],
    delimiter: str | None,
    encoding: str | None,
    row: int,
) -> int | None:
    """The line of the file where data row ROW (1 = the first after the header) starts."""
    meta_delimiter, meta_encoding = csvdata.dialect(metadata)
    try:
        with csvdata.open_text(path, encoding or meta_encoding) as handle:
            records = csvdata.rows(handle, delimiter or meta_delimiter)
            next(records, None)  # the header, as open_source takes it
            count = 0
            for line, record in records:
                if record == []:
                    continue  # a blank line: never sent
                count += 1
                if count == row:
                    return line
    except (OSError, PermanentError):
        return None
    return None


__all__ = ["ITEM_COLUMN", "build"]
