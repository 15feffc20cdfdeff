"""validate-csv, transform and sqlite-load on real files, good and bad."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import ConfigError, PermanentError

from .builtin_helpers import ITEM, build, context, run

COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type": "integer", "empty": False},
    {"name": "amount", "type": "decimal"},
    {"name": "day", "type": "date"},
    {"name": "status", "type": "enum", "values": ["new", "paid"]},
    {"name": "code", "type": "regex", "pattern": "[A-Z]{3}"},
    {"name": "note", "required": False},
]
GOOD = "id,amount,day,status,code\n1,10.50,2026-11-28,new,ABC\n2,,2026-11-29,paid,XYZ\n"


def _file(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


# --- validate-csv ---------------------------------------------------------------


def test_validate_good_file_records_what_it_learnt(tmp_path: Path) -> None:
    stage = build("validate-csv", {"columns": COLUMNS})
    meta = run(stage, context(_file(tmp_path, GOOD)))
    assert meta["rows"] == 2
    assert meta["csv"] == {"delimiter": ",", "encoding": "utf-8"}
    assert meta["schema"] == [
        {"name": "id", "type": "integer"},
        {"name": "amount", "type": "decimal"},
        {"name": "day", "type": "date"},
        {"name": "status", "type": "text"},
        {"name": "code", "type": "text"},
    ]


def test_validate_collects_every_error_with_line_and_column(tmp_path: Path) -> None:
    text = (
        "id,amount,day,status,code\n"
        "1,10.50,2026-11-28,new,ABC\n"
        "x,abc,2026-13-01,old,abc\n"
        "3,1,2026-11-28,new\n"
        ',"multi\nline",2026-11-28,new,ABC\n'
        "5,2.5,2026-11-30,paid,ABC\n"
    )
    stage = build("validate-csv", {"columns": COLUMNS})
    with pytest.raises(PermanentError) as caught:
        run(stage, context(_file(tmp_path, text)))
    errors = str(caught.value).split("; ")
    assert errors == [
        'line 3, column "id": "x" is not an integer',
        'line 3, column "amount": "abc" is not a decimal',
        'line 3, column "day": "2026-13-01" is not a date (%Y-%m-%d)',
        'line 3, column "status": "old" is not one of new, paid',
        'line 3, column "code": "abc" does not match [A-Z]{3}',
        "line 4: 4 fields where the header has 5",
        'line 5, column "id": "" is empty',
        'line 5, column "amount": "multi\nline" is not a decimal',
    ]


def test_validate_stops_at_max_errors(tmp_path: Path) -> None:
    text = "id\n" + "".join(f"x{n}\n" for n in range(100))
    stage = build("validate-csv", {"columns": [{"name": "id", "type": "integer"}], "max_errors": 3})
    with pytest.raises(PermanentError) as caught:
        run(stage, context(_file(tmp_path, text)))
    message = str(caught.value)
    assert message.count("is not an integer") == 3
    assert "and more errors after these 3 (max_errors)" in message


def test_validate_header_problems(tmp_path: Path) -> None:
    stage = build("validate-csv", {"columns": COLUMNS, "extra_columns": "reject"})
    with pytest.raises(PermanentError) as caught:
        run(stage, context(_file(tmp_path, "id,amount,extra\n1,2,3\n")))
    message = str(caught.value)
    assert 'line 1: the header lacks the required column "day"' in message
    assert 'line 1: unexpected column "extra" (extra_columns: reject)' in message
    with pytest.raises(PermanentError, match="empty: no header row"):
        run(stage, context(_file(tmp_path, "", "empty.csv")))


def test_validate_encoding_delimiter_limits(tmp_path: Path) -> None:
    latin = "id;name\n1;Jos\xe9\n".encode("latin-1")
    as_utf8 = build(
        "validate-csv", {"columns": [{"name": "id", "type": "integer"}], "delimiter": ";"}
    )
    with pytest.raises(PermanentError, match=r"line 1: not valid utf-8: byte 0xe9"):
        run(as_utf8, context(_file(tmp_path, latin)))
    as_latin = build(
        "validate-csv",
        {"columns": [{"name": "id", "type": "integer"}], "delimiter": ";", "encoding": "latin-1"},
    )
    assert run(as_latin, context(_file(tmp_path, latin)))["rows"] == 1
    few = build("validate-csv", {"max_rows": 1})
    with pytest.raises(PermanentError, match=r"line 3: more than max_rows \(1\)"):
        run(few, context(_file(tmp_path, "a\n1\n2\n")))
    small = build("validate-csv", {"max_size": "10B"})
    with pytest.raises(PermanentError, match="more than max_size"):
        run(small, context(_file(tmp_path, "a\n1234567890\n")))
    dated = build(
        "validate-csv", {"columns": [{"name": "d", "type": "date", "format": "%d.%m.%Y"}]}
    )
    meta = run(dated, context(_file(tmp_path, "d\n28.11.2026\n")))
    assert meta["schema"] == [{"name": "d", "type": "text"}], "non-ISO dates load as text"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colums": []}, 'unknown key "colums"; did you mean "columns"?'),
        ({"columns": [{"name": "a", "type": "money"}]}, 'expected one of "text", "integer"'),
        ({"columns": [{"name": "a", "type": "enum"}]}, 'an enum column needs "values"'),
        ({"columns": [{"name": "a", "type": "regex", "pattern": "("}]}, "not a valid regular"),
        ({"encoding": "klingon"}, 'unknown encoding "klingon"'),
        ({"delimiter": ";;"}, "expected one character"),
        ({"columns": [{"name": "a"}, {"name": "a"}]}, 'column "a" is declared twice'),
        ({"max_errors": 0}, "expected an integer from 1 to 10000"),
    ],
)
def test_validate_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build("validate-csv", options)
    text = str(caught.value)
    assert text.startswith("/etc/dropline/dropline.yaml:7: pipelines[0].stages[1].with."), text
    assert message in text


# --- transform ------------------------------------------------------------------


def test_transform_normalises_renames_selects_dedupes(tmp_path: Path) -> None:
    raw = "id;Name ;amount\r\n1; Jos\xe9 ;10\r\n2;Ann;20\r\n1;Jos\xe9;10\r\n".encode("latin-1")
    src = _file(tmp_path, raw)
    stage = build(
        "transform",
        {
            "delimiter": ";",
            "encoding": "latin-1",
            "rename": {"Name": "name"},
            "select": ["name", "id"],
            "dedupe": ["id"],
        },
    )
    assert stage.modifies is False
    ctx = context(src)
    meta = run(stage, ctx)
    out = Path(meta["data_path"])
    assert out.parent == ctx.scratch
    assert out.read_bytes() == "name,id\nJosé,1\nAnn,2\n".encode()
    assert src.read_bytes() == raw, "archive: original keeps the dropped file as it was"
    assert meta["rows"] == 2 and meta["duplicates_dropped"] == 1
    assert meta["csv"] == {"delimiter": ",", "encoding": "utf-8"}
    assert [c["name"] for c in meta["schema"]] == ["name", "id"]


def test_transform_archive_transformed_replaces_the_working_file(tmp_path: Path) -> None:
    src = _file(tmp_path, "a,b\r\n 1 , 2 \r\n")
    stage = build("transform", {"archive": "transformed"})
    assert stage.modifies is True, "it declares that it rewrites the file"
    meta = run(stage, context(src))
    assert src.read_bytes() == b"a,b\n1,2\n"
    assert meta["data_path"] == ""
    assert not list(tmp_path.glob(".dropline-tmp-*"))
    assert run(stage, context(src))["rows"] == 1, "run again: the same result"
    assert src.read_bytes() == b"a,b\n1,2\n"


def test_transform_unknown_column_fails_the_file(tmp_path: Path) -> None:
    stage = build("transform", {"select": ["nope"]})
    with pytest.raises(PermanentError, match='no column "nope"'):
        run(stage, context(_file(tmp_path, "a\n1\n")))


# --- sqlite-load ----------------------------------------------------------------


def _validated(tmp_path: Path, text: str) -> tuple[Path, dict[str, Any]]:
    src = _file(tmp_path, text)
    meta = run(build("validate-csv", {"columns": COLUMNS}), context(src))
    return src, meta


def test_sqlite_load_creates_typed_table_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "loaded.db"
    src, meta = _validated(tmp_path, GOOD)
    stage = build("sqlite-load", {"database": str(db), "table": "orders"})
    assert run(stage, context(src, metadata=meta)) == {"loaded_rows": 2, "table": "orders"}
    run(stage, context(src, metadata=meta))  # again: a retry, or after a crash
    other = "01JD3Q6W5X0B8Z2Y7V4T9R1M0Z"
    run(stage, context(src, metadata=meta, item_id=other))
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT id, amount, day, status, dropline_item FROM orders ORDER BY dropline_item, id"
        ).fetchall()
        types = {r[1]: r[2] for r in con.execute("PRAGMA table_info(orders)")}
    finally:
        con.close()
    assert rows == [
        (1, 10.5, "2026-11-28", "new", ITEM),
        (2, None, "2026-11-29", "paid", ITEM),
        (1, 10.5, "2026-11-28", "new", other),
        (2, None, "2026-11-29", "paid", other),
    ]
    assert types["id"] == "INTEGER" and types["amount"] == "NUMERIC"
    assert types["dropline_item"] == "TEXT"


def test_sqlite_load_refuses_bad_names_and_missing_table(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    stage = build("sqlite-load", {"database": str(db), "table": "t"})
    with pytest.raises(PermanentError, match='column "bad name" cannot be a column'):
        run(stage, context(_file(tmp_path, "bad name\n1\n")))
    no_create = build("sqlite-load", {"database": str(db), "table": "absent", "create": False})
    with pytest.raises(PermanentError, match="does not exist"):
        run(no_create, context(_file(tmp_path, "a\n1\n")))
    with pytest.raises(ConfigError, match=r"with\.table: expected an SQL identifier"):
        build("sqlite-load", {"database": str(db), "table": "drop table"})
    with pytest.raises(ConfigError, match="relative path"):
        build("sqlite-load", {"database": "x.db", "table": "t"})


def test_sqlite_load_of_100000_rows_in_bounded_memory(tmp_path: Path) -> None:
    rows = 100_000
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("id,amount,day,status,code\n")
        for n in range(rows):
            f.write(f"{n},{n}.25,2026-11-28,new,ABC\n")
    size = path.stat().st_size
    meta = run(build("validate-csv", {"columns": COLUMNS}), context(path))
    stage = build("sqlite-load", {"database": str(tmp_path / "big.db"), "table": "big"})
    tracemalloc.start()
    try:
        assert run(stage, context(path, metadata=meta))["loaded_rows"] == rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Streamed: the peak is a small fraction of the file, not the file.
    assert peak < min(size / 4, 4 * 1024 * 1024), f"peak {peak} bytes for a {size}-byte file"
    con = sqlite3.connect(tmp_path / "big.db")
    try:
        assert con.execute("SELECT count(*), sum(id) FROM big").fetchone() == (
            rows,
            rows * (rows - 1) // 2,
        )
    finally:
        con.close()
