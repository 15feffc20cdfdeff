"""The batch row writers of the state database, item ids, and the last migration.

A batch's rows are written with one statement per chunk of rows (``UPDATE
... FROM (VALUES ...)``); an SQLite older than 3.33 gets one statement per
row.  Both must leave exactly the same rows, across chunk boundaries.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from dropline import ids
from dropline.state import MIGRATIONS, Database, ItemLog, StateReader, items

ROWS = 150  # more than two chunks of items._CHUNK_ROWS


def _write_batches(path: Path) -> list[tuple[Any, ...]]:
    db = Database(path)
    log = ItemLog(db)
    now = 1_700_000_000.0
    item_ids = [f"ID{i:04d}" for i in range(ROWS)]
    with db.transaction():
        log.insert_claiming_many(
            [(i, f"n{k}".encode(), f"w{k}".encode(), 7, 100 + k) for k, i in enumerate(item_ids)],
            now,
        )
    with db.transaction():
        log.mark_active_many(
            [("p", f"h{k}", k, 10 * k, i) for k, i in enumerate(item_ids[:40])], now + 1
        )
        log.mark_claimed_finishing_many(
            [
                ("q", f"s{k}", k, 20 * k, "archived", "", "2026-11-29", f"f{k}".encode(), i)
                for k, i in enumerate(item_ids[40:], 40)
            ],
            now + 2,
        )
        log.mark_finishing_many(
            [("failed", f"why {k}", "", f"e{k}".encode(), i) for k, i in enumerate(item_ids[:40])],
            now + 3,
        )
    with db.transaction():
        log.mark_finished_many(
            [("archived" if k % 3 else "vanished", i) for k, i in enumerate(item_ids[40:], 40)],
            now + 4,
        )
    db.close()
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, name, working_name, pipeline, state, size, sha256, src_dev, src_ino, "
            "outcome, reason, final_dir, final_name, created_at, updated_at, finished_at, "
            "ctime_ns FROM items ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_rows_in_chunks_equal_rows_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VALUES-list statements and one statement per row write the same rows."""
    chunked = _write_batches(tmp_path / "chunked.db")
    monkeypatch.setattr(items, "_UPDATE_FROM", False)
    one_by_one = _write_batches(tmp_path / "rows.db")
    assert chunked == one_by_one
    assert len(chunked) == ROWS
    by_id = {row[0]: row for row in chunked}
    first = by_id["ID0000"]
    assert (first[3], first[4], first[9], first[10], first[12]) == (
        "p",
        "finishing",
        "failed",
        "why 0",
        b"e0",
    )
    row = by_id["ID0041"]
    assert (row[3], row[4], row[6], row[11], row[12], row[15]) == (
        "q",
        "archived",
        "s41",
        "2026-11-29",
        b"f41",
        1_700_000_004.0,
    )
    assert by_id["ID0042"][4] == "vanished"
    assert by_id["ID0149"][8] == 249  # src_ino, from the last chunk of the insert


def _crockford(value: int) -> str:
    """The plain encoding: 26 characters, five bits each, most significant first."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def test_item_ids_are_ulids() -> None:
    """48 bits of milliseconds then 80 random bits, in Crockford base32; ids sort by time."""
    before = ids._random.getstate()
    made = ids.new_item_id(1_700_000_000.123)
    ids._random.setstate(before)
    random_bits = ids._random.getrandbits(80)
    assert made == _crockford((1_700_000_000_123 << 80) | random_bits)
    series = [ids.new_item_id(t) for t in (1.0, 1.0, 1.001, 2.5, time.time())]
    assert len(set(series)) == len(series)
    assert [s[:10] for s in series] == sorted(s[:10] for s in series)
    assert all(len(s) == 26 for s in series)


def test_schema_3_migrates_without_the_name_index(tmp_path: Path) -> None:
    """A database left by the previous schema opens, loses items_name, keeps its rows,
    and a look-up by name (history, retry) still finds them."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for number, migration in enumerate(MIGRATIONS[:3], 1):
        conn.executescript(migration)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO items (id, name, working_name, state, created_at, updated_at) "
        "VALUES ('OLD1', x'6f6c642e637376', x'6f6c642e637376', 'failed', 1.0, 2.0)"
    )
    conn.commit()
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'items_name'").fetchone()
    conn.close()

    db = Database(path)
    assert db.schema_version == len(MIGRATIONS) >= 4
    db.close()
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert "items_name" not in indexes
    assert "items_state_finished" in indexes
    found = StateReader(path).items_named(b"old.csv")
    assert [(i.id, i.state) for i in found] == [("OLD1", "failed")]


def test_a_migration_made_meanwhile_by_another_process_is_not_made_twice(
    tmp_path: Path,
) -> None:
    """Two dropline processes open a database of the previous schema at once: the one
    that reads the version first, then waits for the lock while the other migrates,
    reads it again under the lock and does not migrate twice ("duplicate column")."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    last = len(MIGRATIONS) - 1
    for number, migration in enumerate(MIGRATIONS[:last], 1):
        conn.executescript(migration)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.commit()
    conn.close()

    class Late(Database):
        """Reads the version, then the other process migrates before its lock."""

        reads = 0

        @property
        def schema_version(self) -> int:
            version = super().schema_version
            Late.reads += 1
            if Late.reads == 1:
                Database(path).close()  # the other process: a whole, real migration
            return version

    db = Late(path)
    assert Late.reads >= 2 and db.schema_version == len(MIGRATIONS)
    db.close()
