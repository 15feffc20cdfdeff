"""The table postgres-load fills: the file's header as its columns, checked,
and the table created with the item's column when the stage may create it.

Apart from the loading itself (``postgres_load.py``) because it is what an
operator reads when a load is refused for the table's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PermanentError
from . import csvdata

if TYPE_CHECKING:
    import psycopg
    import psycopg.sql

ITEM_COLUMN = "dropline_item"
_MAX_NAME = 63  # bytes of an identifier PostgreSQL keeps (NAMEDATALEN - 1)


def index_name(table: str) -> str:
    """The index on the item's column: the table's name (without its schema), suffixed."""
    suffix = f"_{ITEM_COLUMN}_idx"
    return table[: _MAX_NAME - len(suffix)] + suffix


def checked_header(header: Sequence[str]) -> list[str]:
    """The header as column names, or PermanentError saying why it cannot be one."""
    seen: set[str] = set()
    for number, name in enumerate(header, 1):
        if not name:
            raise PermanentError(f"line 1: column {number} of the header has no name")
        if "\x00" in name or len(name.encode("utf-8")) > _MAX_NAME:
            raise PermanentError(
                f'line 1: column "{name[:80]}" cannot be a PostgreSQL column name '
                f"(at most {_MAX_NAME} bytes, no NUL)"
            )
        if name == ITEM_COLUMN:
            raise PermanentError(
                f'line 1: the header has a column "{ITEM_COLUMN}"; postgres-load fills that '
                f"column itself with the item's id"
            )
        if name in seen:
            raise PermanentError(f'line 1: the header names column "{name}" twice')
        seen.add(name)
    return list(header)


def create_table(
    conn: psycopg.Connection[Any],
    target: psycopg.sql.Identifier,
    index: str,
    columns: list[str],
    kinds: Mapping[str, str],
) -> None:
    """TARGET with COLUMNS (typed as validate-csv declared them, KINDS) and the item's
    column with its INDEX, unless it exists."""
    from psycopg import sql

    name = target.as_string(conn)  # quoted: to_regclass reads it exactly as configured
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    if row is not None and row[0]:
        return
    definitions = [
        sql.SQL("{} {}").format(
            sql.Identifier(c), sql.SQL(csvdata.sql_type(kinds.get(c, "text"), "postgres"))
        )
        for c in columns
    ]
    definitions.append(sql.SQL("{} text NOT NULL").format(sql.Identifier(ITEM_COLUMN)))
    with conn.transaction():
        # Two items of a new table at once: one creates it, the other then finds it.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dropline:{name}",))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                target, sql.SQL(", ").join(definitions)
            )
        )
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(index), target, sql.Identifier(ITEM_COLUMN)
            )
        )


def check_columns(
    conn: psycopg.Connection[Any],
    target: psycopg.sql.Identifier,
    table: str,
    may_create: bool,
    columns: list[str],
) -> None:
    """TABLE has the item's column and every column of the file's header."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped",
        (target.as_string(conn),),
    ).fetchall()
    have = {str(r[0]) for r in rows}
    if not have:
        why = "" if may_create else " (create: false)"
        raise LookupError(f"table {table} does not exist{why}")
    if ITEM_COLUMN not in have:
        raise LookupError(
            f'table {table} has no column "{ITEM_COLUMN}" for the id of the item each '
            f"row came from; add it: ALTER TABLE {table} "
            f"ADD COLUMN {ITEM_COLUMN} text NOT NULL"
        )
    missing = [c for c in columns if c not in have]
    if missing:
        names = ", ".join(f'"{c}"' for c in missing)
        raise PermanentError(f"line 1: table {table} has no column {names}")
