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

There is no shutdown hook for builtins: a connection is closed when its
thread ends or its stage is dropped (a reload), or left to the process's
exit, which is harmless since it is held only between transactions.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

C = TypeVar("C")

# Connections inherited across fork: kept referenced so that they are never
# closed (or garbage-collected, which closes) in the child.
_INHERITED: list[object] = []


class _Slot(Generic[C]):
    """A thread's connection, with the process and thread it belongs to."""

    def __init__(self, conn: C, close: Callable[[C], None]) -> None:
        self.conn: C | None = conn
        self.pid = os.getpid()
        self.thread = weakref.ref(threading.current_thread())
        self._close = close

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.pid != os.getpid():
            _INHERITED.append(conn)
            return
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            self._close(conn)


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _close_all(slots: list[_Slot[Any]], lock: threading.Lock) -> None:
    with lock:
        for slot in slots:
            slot.close()
        slots.clear()


class Held(Generic[C]):
    """This thread's connection, opened by OPEN when there is none (or the one held is stale).

    Every slot is also listed outside the thread-locals, in a list that a
    finalizer of this object closes: so the connections are closed when the
    stage is dropped (a reload) even when that happens in a garbage cycle,
    where the order of finalizers is not known, and those of threads that
    ended are closed when the next one is opened.
    """

    def __init__(self, open_: Callable[[], C], close: Callable[[C], None]) -> None:
        self._open = open_
        self._close = close
        self._local = threading.local()
        self._lock = threading.Lock()
        self._slots: list[_Slot[C]] = []
        weakref.finalize(self, _close_all, self._slots, self._lock)

    def get(self) -> tuple[C, bool]:
        """(the connection, whether it was opened just now)."""
        slot: _Slot[C] | None = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is not None and slot.pid == os.getpid():
            return slot.conn, False
        self.drop()  # a parent's connection is kept aside, never used here
        slot = _Slot(self._open(), self._close)
        with self._lock:
            gone = [s for s in self._slots if not _alive(s.thread()) or s.pid != os.getpid()]
            for old in gone:
                old.close()
            self._slots[:] = [s for s in self._slots if s not in gone]
            self._slots.append(slot)
        self._local.slot = slot
        assert slot.conn is not None
        return slot.conn, True

    def drop(self) -> None:
        """Close this thread's connection (after an error, or when it is stale)."""
        slot: _Slot[C] | None = getattr(self._local, "slot", None)
        self._local.slot = None
        if slot is not None:
            slot.close()
            with self._lock:
                if slot in self._slots:
                    self._slots.remove(slot)


__all__ = ["Held"]
