"""The CSV builtins share one parse per file and loaders hold their connection: never stale."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import PermanentError
from dropline.stages import csvcache, csvdata

from .builtin_helpers import build, context, run

COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type": "integer", "empty": False},
    {"name": "amount", "type": "decimal"},
]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    csvcache.clear()
    yield
    csvcache.clear()


def _pipeline(tmp_path: Path, path: Path, item: str, database: Path) -> dict[str, Any]:
    """validate-csv, transform (dedupe on id), sqlite-load on PATH, metadata passed on."""
    meta: dict[str, Any] = {}
    for name, options in (
        ("validate-csv", {"columns": COLUMNS}),
        ("transform", {"dedupe": ["id"]}),
        ("sqlite-load", {"database": str(database), "table": "t"}),
    ):
        meta.update(run(build(name, options), context(path, item_id=item, metadata=meta)))
    return meta


def test_consecutive_builtins_parse_a_file_once(tmp_path: Path) -> None:
    """transform finds validate-csv's parse, and sqlite-load the parse of transform's output."""
    path = tmp_path / "a.csv"
    path.write_text("id,amount\n1,2.50\n1,2.50\n2,3\n")
    meta = _pipeline(tmp_path, path, "A", tmp_path / "out.db")
    assert meta["loaded_rows"] == 2
    assert (csvcache.stats().misses, csvcache.stats().hits) == (1, 2)


def test_a_file_changed_between_stages_is_parsed_again(tmp_path: Path) -> None:
    """Rewritten in place after validate-csv, same size, inode and mtime: transform reads the
    new bytes, never the parse of the old ones."""
    path = tmp_path / "a.csv"
    path.write_text("id,amount\n1,2.50\n")
    validated = run(build("validate-csv", {"columns": COLUMNS}), context(path))
    before = path.stat()
    with path.open("r+") as f:  # same inode, same size
        f.write("id,amount\n7,9.50\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    database = tmp_path / "out.db"
    loaded = run(
        build("sqlite-load", {"database": str(database), "table": "t"}),
        context(path, metadata=validated),
    )
    assert loaded["loaded_rows"] == 1
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT id, amount FROM t").fetchall() == [(7, 9.5)]
    assert csvcache.stats().hits == 0


def test_a_bad_file_is_streamed_and_errors_read_as_before(tmp_path: Path) -> None:
    """Not valid UTF-8: nothing remembered, and the error names the line as streaming does."""
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,amount\n1,2\n2,\xff\n")
    with csvdata.open_text(path, "utf-8") as handle, pytest.raises(PermanentError) as streamed:
        list(csvdata.rows(handle, ","))
    stage = build("validate-csv", {"columns": COLUMNS})
    for _ in range(2):
        with pytest.raises(PermanentError) as caught:
            run(stage, context(path))
        assert str(caught.value) == str(streamed.value)
    assert csvcache.stats().hits == 0


def test_sqlite_load_reopens_a_replaced_database(tmp_path: Path) -> None:
    """The database file replaced between two files: the second file's rows go to the new
    file, not to the old one the held connection still has open."""
    database = tmp_path / "out.db"
    stage = build("sqlite-load", {"database": str(database), "table": "t"})
    one, two = tmp_path / "1.csv", tmp_path / "2.csv"
    one.write_text("id\n1\n")
    two.write_text("id\n2\n")
    run(stage, context(one, item_id="ONE"))
    fresh = tmp_path / "fresh.db"
    sqlite3.connect(fresh).close()
    os.replace(fresh, database)
    run(stage, context(two, item_id="TWO"))
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT id, dropline_item FROM t").fetchall() == [("2", "TWO")]


def test_sqlite_load_reopens_a_connection_closed_under_it(tmp_path: Path) -> None:
    """The held connection closed between two files: the next file opens a new one."""
    database = tmp_path / "out.db"
    stage = build("sqlite-load", {"database": str(database), "table": "t"})
    one, two = tmp_path / "1.csv", tmp_path / "2.csv"
    one.write_text("id\n1\n")
    two.write_text("id\n2\n")
    run(stage, context(one, item_id="ONE"))
    held = stage.func.held  # type: ignore[attr-defined]
    conn, fresh = held.get()
    assert not fresh  # the first file's connection, held
    conn.conn.close()
    assert run(stage, context(two, item_id="TWO"))["loaded_rows"] == 1
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT id FROM t ORDER BY id").fetchall() == [("1",), ("2",)]


@pytest.mark.parametrize(
    "text",
    [
        "a,b\n1,2\n3,4\n",
        "a,b\n1,2\n3,4",
        "a,b\r\n1,2\r\n\r\n3,4\r\n",
        'a,b\n1,"two\nlines"\n3,4\n',
        'a,b\n1,"two\nlines"\n3,4',
        "a,b\n\n\n1,2\n",
        "a,b\r1,2\r",
    ],
)
def test_a_remembered_parse_is_the_streamed_one(tmp_path: Path, text: str) -> None:
    """Records and their line numbers as csvdata.rows streams them, whatever the line ends."""
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode())
    with csvdata.open_text(path, "utf-8") as handle:
        streamed = list(csvdata.rows(handle, ","))
    assert list(csvcache.parsed(path, ",", "utf-8") or []) == streamed
    assert list(csvcache.parsed(path, ",", "utf-8") or []) == streamed  # remembered
    assert csvcache.stats().hits == 1
