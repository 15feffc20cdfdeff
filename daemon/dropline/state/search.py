"""Which items ``history`` finds: a query's conditions as SQL.

Names are BLOBs (bytes, not always UTF-8), looked up without an index
(schema 4 dropped it: see the README); a glob is fnmatch's, as SQLite's
GLOB reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemQuery:
    """Which items ``search`` finds: every condition given must hold.

    NAME: a name in incoming/ (bytes, exact); GLOB: fnmatch's syntax on the
    name (as SQLite's GLOB reads it: ``glob_pattern``); SINCE and UNTIL:
    claimed at or after, and before; STATES: the rows' states."""

    name: bytes | None = None
    glob: str | None = None
    since: float | None = None
    until: float | None = None
    pipeline: str | None = None
    states: tuple[str, ...] = ()


# Names are BLOBs (bytes, not always UTF-8): GLOB compares them, and the pattern,
# as text (a BLOB on either side matches nothing).
_NAME_GLOB = "CAST(name AS TEXT) GLOB CAST(? AS TEXT)"


def glob_pattern(glob: str) -> str:
    """An fnmatch glob as SQLite's GLOB reads it: ``[!...]`` is ``[^...]`` there."""
    return glob.replace("[!", "[^")


def glob_literal(name: bytes) -> bytes:
    """NAME as a GLOB pattern that matches only itself."""
    out = bytearray()
    for byte in name:
        char = bytes([byte])
        out += b"[" + char + b"]" if char in b"*?[" else char
    return bytes(out)


def where_clause(query: ItemQuery) -> tuple[str, list[Any]]:
    """QUERY's conditions joined with AND (empty: every item), and their parameters."""
    where: list[str] = []
    params: list[Any] = []
    if query.name is not None:
        # The name in incoming/, or in a folder of it (recursive mode).
        where.append(f"(name = ? OR {_NAME_GLOB})")
        params += [query.name, b"*/" + glob_literal(query.name)]
    if query.glob is not None:
        pattern = os.fsencode(glob_pattern(query.glob))
        where.append(f"({_NAME_GLOB} OR {_NAME_GLOB})")
        params += [pattern, b"*/" + pattern]
    if query.since is not None:
        where.append("created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("created_at < ?")
        params.append(query.until)
    if query.pipeline is not None:
        where.append("pipeline = ?")
        params.append(query.pipeline)
    if query.states:
        where.append(f"state IN ({','.join('?' * len(query.states))})")
        params += list(query.states)
    return " AND ".join(where), params
