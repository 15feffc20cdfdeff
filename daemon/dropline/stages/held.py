"""A loader's database connection held across files: one per thread, never across fork.

sqlite-load and postgres-load used to connect for every file: for small
files the connection (opening the file and reading its schema, or a
PostgreSQL handshake) cost as much as the load.  Each worker thread now
keeps its own connection per stage (a connection is used by one thread at
a time, and a stage may run in several workers at once), the loader drops
it after an error, and a connection is never used in a process other than
the one that opened it: a forked child that finds its parent's connection
leaves it alone (closing it there could end the parent's session or, for
SQLite, remove a WAL file in use) and opens its own.

Connections are not closed at shutdown: when the worker's thread or process
ends they are released with it, which is harmless since a connection is
held only between transactions, never inside one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")

# Connections inherited across fork: kept referenced so that they are never
# closed (or garbage-collected, which closes) in the child.
_INHERITED: list[object] = []


class Held(Generic[C]):
    """This thread's connection, opened by OPEN when there is none (or the one held is stale)."""

    def __init__(self, open_: Callable[[], C], close: Callable[[C], None]) -> None:
        self._open = open_
        self._close = close
        self._local = threading.local()

    def get(self) -> tuple[C, bool]:
        """(the connection, whether it was opened just now)."""
        local = self._local
        conn: C | None = getattr(local, "conn", None)
        if conn is not None and local.pid != os.getpid():
            _INHERITED.append(conn)
            conn = local.conn = None
        if conn is not None:
            return conn, False
        conn = self._open()
        local.conn, local.pid = conn, os.getpid()
        return conn, True

    def drop(self) -> None:
        """Close this thread's connection (after an error, or when it is stale)."""
        local = self._local
        conn: C | None = getattr(local, "conn", None)
        local.conn = None
        if conn is not None and local.pid == os.getpid():
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                self._close(conn)
        elif conn is not None:
            _INHERITED.append(conn)


__all__ = ["Held"]
