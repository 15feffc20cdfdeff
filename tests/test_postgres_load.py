"""postgres-load against a real PostgreSQL server of the tests' own (tests/pg.py).

No mocks: a fresh cluster is made and started once for the session, on
127.0.0.1 with a free port; each test loads into tables of its own names.
Where no server can be had, every test here skips, saying what was missing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import ConfigError, PermanentError
from dropline.stages import StageContext, call_stage
from dropline.stages.builtin import build_builtin

from .builtin_helpers import context as builtin_context
from .harness import REPO, Tree, cli_json, run_until_idle
from .pg import PgServer

SCHEMA = [
    {"name": "id", "type": "integer"},
    {"name": "amount", "type": "decimal"},
    {"name": "day", "type": "date"},
    {"name": "note", "type": "text"},
]


def stage_of(options: Mapping[str, Any]) -> Callable[[StageContext], dict[str, Any]]:
    """The postgres-load stage for OPTIONS; it returns its metadata (never None)."""
    built = build_builtin(
        "postgres-load", options, file="/etc/dropline/dropline.yaml", line=7, key="s"
    )

    def run(ctx: StageContext) -> dict[str, Any]:
        metadata = built.func(ctx)
        assert metadata is not None
        return dict(metadata)

    return run


def context(path: Path, item: str, metadata: Mapping[str, Any] | None = None) -> StageContext:
    return builtin_context(path, item_id=item, metadata=metadata)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def rows_of(pg: PgServer, table: str, item: str | None = None) -> list[tuple[Any, ...]]:
    where = "" if item is None else " WHERE dropline_item = %s"
    return pg.query(f"SELECT * FROM {table}{where} ORDER BY 1", (item,) if item else ())


def test_loads_rows_with_the_schema_types(pg: PgServer, tmp_path: Path) -> None:
    """A validated CSV (';'-delimited, as the metadata says) lands with the schema's types:
    bigint, numeric, date, text; an empty value is NULL; the item column is indexed."""
    path = write(
        tmp_path / "orders.csv",
        """
        id;amount;day;note
        1;12.50;2024-01-02;"semi;colon
        and a newline"
        2;-3;2024-02-29;
        3;;2024-12-31;plain
        """,
    )
    metadata = {"schema": SCHEMA, "csv": {"delimiter": ";", "encoding": "utf-8"}, "rows": 3}
    stage = stage_of({"dsn": pg.dsn(), "table": "typed_orders"})
    assert stage(context(path, "ITEM1", metadata)) == {"loaded_rows": 3, "table": "typed_orders"}

    types = pg.query(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'typed_orders' ORDER BY ordinal_position"
    )
    assert types == [
        ("id", "bigint", "YES"),
        ("amount", "numeric", "YES"),
        ("day", "date", "YES"),
        ("note", "text", "YES"),
        ("dropline_item", "text", "NO"),
    ]
    assert rows_of(pg, "typed_orders") == [
        (1, Decimal("12.50"), dt.date(2024, 1, 2), "semi;colon\nand a newline", "ITEM1"),
        (2, Decimal("-3"), dt.date(2024, 2, 29), None, "ITEM1"),
        (3, None, dt.date(2024, 12, 31), "plain", "ITEM1"),
    ]
    indexes = pg.query("SELECT indexdef FROM pg_indexes WHERE tablename = 'typed_orders'")
    assert [i[0] for i in indexes] == [
        "CREATE INDEX typed_orders_dropline_item_idx ON public.typed_orders "
        "USING btree (dropline_item)"
    ]


def test_running_an_item_again_replaces_its_rows_only(pg: PgServer, tmp_path: Path) -> None:
    """The same item loaded twice leaves one copy of its rows (the latest file's);
    another item's rows are untouched."""
    stage = stage_of({"dsn": pg.dsn(), "table": "again"})
    first = write(tmp_path / "a.csv", "id,name\n1,one\n2,two\n")
    other = write(tmp_path / "b.csv", "id,name\n10,ten\n")
    meta = {"schema": [{"name": "id", "type": "integer"}]}
    assert stage(context(first, "A", meta))["loaded_rows"] == 2
    assert stage(context(other, "B", meta))["loaded_rows"] == 1
    assert stage(context(first, "A", meta))["loaded_rows"] == 2  # a retry after a crash
    assert rows_of(pg, "again") == [(1, "one", "A"), (2, "two", "A"), (10, "ten", "B")]

    # The file of A as a transform rewrote it: its rows replace the old ones, all of them.
    write(first, "id,name\n3,three\n")
    assert stage(context(first, "A", meta))["loaded_rows"] == 1
    assert rows_of(pg, "again") == [(3, "three", "A"), (10, "ten", "B")]


def test_an_existing_table_in_a_schema_is_loaded_as_it_is(pg: PgServer, tmp_path: Path) -> None:
    """create: false with schema.table: the operator's table and its types; columns the file
    lacks take their defaults; a column the table lacks fails the file; no table is retried."""
    pg.query("CREATE SCHEMA IF NOT EXISTS sales")
    pg.query(
        "CREATE TABLE sales.ledger (id integer PRIMARY KEY, total numeric(10,2), "
        "loaded_at timestamptz NOT NULL DEFAULT now(), dropline_item text NOT NULL)"
    )
    path = write(tmp_path / "ledger.csv", "total,id\n1.5,1\n2.25,2\n")
    stage = stage_of({"dsn": pg.dsn(), "table": "sales.ledger", "create": False})
    assert stage(context(path, "L1")) == {"loaded_rows": 2, "table": "sales.ledger"}
    assert pg.query("SELECT id, total, dropline_item FROM sales.ledger ORDER BY id") == [
        (1, Decimal("1.50"), "L1"),
        (2, Decimal("2.25"), "L1"),
    ]

    extra = write(tmp_path / "extra.csv", "id,total,colour\n3,1,red\n")
    with pytest.raises(PermanentError, match=r'line 1: table sales.ledger has no column "colour"'):
        stage(context(extra, "L2"))

    missing = stage_of({"dsn": pg.dsn(), "table": "sales.nowhere", "create": False})
    outcome, error, _ = call_stage(missing, context(path, "L3"))
    assert outcome == "failed"
    assert "table sales.nowhere does not exist" in error


def test_bad_value_fails_the_file_naming_its_line(pg: PgServer, tmp_path: Path) -> None:
    """A value PostgreSQL refuses is a PermanentError with its message and the file's line
    (a quoted field spanning two lines comes before it); the item's old rows stay."""
    stage = stage_of({"dsn": pg.dsn(), "table": "refused"})
    path = write(tmp_path / "r.csv", "id,note\n1,a\n2,b\n")
    assert stage(context(path, "R", {"schema": SCHEMA}))["loaded_rows"] == 2
    # Not validated this time: the values go to PostgreSQL as text, and it checks them.
    write(path, 'id,note\n3,"two\nlines"\n4,c\nabc,d\n5,e\n')
    with pytest.raises(PermanentError) as caught:
        stage(context(path, "R"))
    message = str(caught.value)
    assert message.startswith('line 5: invalid input syntax for type bigint: "abc"'), message
    assert 'COPY refused, line 3, column id: "abc"' in message
    outcome, error, _ = call_stage(stage, context(path, "R"))
    assert (outcome, error) == ("permanent", message)
    assert [r[0] for r in rows_of(pg, "refused", "R")] == [1, 2]  # rolled back


def test_bad_files_fail_before_any_row_is_loaded(pg: PgServer, tmp_path: Path) -> None:
    """A header naming dropline_item or a column twice, an empty file, a short row: permanent."""
    stage = stage_of({"dsn": pg.dsn(), "table": "shapes"})
    cases = {
        "id,dropline_item\n1,x\n": 'line 1: the header has a column "dropline_item"',
        "id,id\n1,2\n": 'line 1: the header names column "id" twice',
        "": "the file is empty",
        "id,name\n1,a\n2\n": "line 3: 1 fields where the header has 2",
    }
    for n, (text, expected) in enumerate(cases.items()):
        path = write(tmp_path / f"s{n}.csv", text)
        with pytest.raises(PermanentError, match=expected):
            stage(context(path, f"S{n}"))
    assert pg.query("SELECT count(*) FROM shapes") == [(0,)]  # made by the short row's load


def test_large_file_is_streamed_in_bounded_memory(pg: PgServer, tmp_path: Path) -> None:
    """100,000 rows (about 30 MB) load with the process's peak RSS and Python's traced peak
    barely moving: the rows are streamed to COPY, never held."""
    path = tmp_path / "big.csv"
    filler = "x" * 250
    with path.open("w") as f:
        f.write("id,amount,note\n")
        for i in range(100_000):
            f.write(f"{i},{i}.25,{filler}{i}\n")
    small = write(tmp_path / "small.csv", "id,amount,note\n1,1.5,warm\n")
    # A process of its own, so that the peak RSS before the load is this load's baseline.
    script = textwrap.dedent(
        """
        import json, resource, sys, tracemalloc
        from pathlib import Path
        from dropline.stages import StageContext
        from dropline.stages.builtin import build_builtin

        dsn, big, small = sys.argv[1:4]
        stage = build_builtin(
            "postgres-load", {"dsn": dsn, "table": "big"}, file="x.yaml", line=1, key="s"
        ).func
        meta = {"schema": [{"name": "id", "type": "integer"},
                           {"name": "amount", "type": "decimal"}]}
        def ctx(path, item):
            return StageContext(item, Path(path), "f.csv", "p", "s", 1, meta)
        stage(ctx(small, "WARM"))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        result = stage(ctx(big, "BIG"))
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"result": result, "rss_kib": after - before, "traced": traced_peak}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, pg.dsn(), str(path), str(small)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "daemon")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == {"loaded_rows": 100_000, "table": "big"}
    assert report["rss_kib"] < 50 * 1024, report
    assert report["traced"] < 16 * 1024 * 1024, report
    assert pg.query(
        "SELECT count(*), sum(id), max(amount) FROM big WHERE dropline_item = 'BIG'"
    ) == [(100_000, sum(range(100_000)), Decimal("99999.25"))]


def test_dsn_from_the_environment(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dsn_env: the connection string comes from the daemon's environment, not the YAML."""
    monkeypatch.setenv("DROPLINE_TEST_PG", pg.dsn())
    stage = stage_of({"dsn_env": "DROPLINE_TEST_PG", "table": "from_env"})
    path = write(tmp_path / "e.csv", "id\n1\n")
    assert stage(context(path, "E")) == {"loaded_rows": 1, "table": "from_env"}


def test_dsn_from_a_credential(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dsn_credential: the connection string (its password with it) comes from the file
    systemd's LoadCredential= passed; a wrong one is not repeated in the error."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "pg-dsn").write_text(pg.dsn() + "\n")
    (folder / "garbled").write_text("host password=hunter2\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    stage = stage_of({"dsn_credential": "pg-dsn", "table": "from_credential"})
    path = write(tmp_path / "c.csv", "id\n1\n")
    assert stage(context(path, "C")) == {"loaded_rows": 1, "table": "from_credential"}
    with pytest.raises(ConfigError) as caught:
        stage_of({"dsn_credential": "garbled", "table": "t"})
    assert "the credential does not hold a valid" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="not passed"):
        stage_of({"dsn_credential": "absent", "table": "t"})
    with pytest.raises(ConfigError, match="not both"):
        stage_of({"dsn_credential": "pg-dsn", "dsn_env": "X", "table": "t"})


@pytest.mark.parametrize(
    ("options", "key", "line", "text"),
    [
        ({"table": "t"}, "dsn", 7, 'missing required key "dsn"'),
        ({"dsn": "host=h", "dsn_env": "X", "table": "t"}, "dsn_env", 4, "not both"),
        ({"dsn": "host=h", "table": "bad-name"}, "table", 5, 'got "bad-name"'),
        ({"dsn": "host=h", "table": "a.b.c"}, "table", 5, '"schema.table"'),
        ({"dsn": "host=h", "table": "t", "tabel": "u"}, "tabel", 6, 'did you mean "table"'),
        ({"dsn": "host", "table": "t"}, "dsn", 3, "not a valid libpq connection string"),
        ({"dsn_env": "DROPLINE_TEST_UNSET", "table": "t"}, "dsn_env", 4, "is not set"),
        ({"dsn": "host=h", "table": "t", "create": "yes"}, "create", 6, "true or false"),
        ({"dsn": "host=h", "table": "t", "delimiter": ";;"}, "delimiter", 6, "single"),
        ({"dsn": "host=h", "table": "t", "encoding": "utf-9"}, "encoding", 6, "unknown"),
        (
            {"dsn": "host=h", "table": "t", "connect_timeout": "soon"},
            "connect_timeout",
            6,
            "as a duration",
        ),
    ],
)
def test_wrong_options_are_config_errors(
    options: dict[str, Any], key: str, line: int, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each wrong option is refused at start-up naming the file, its own line and its key."""
    monkeypatch.delenv("DROPLINE_TEST_UNSET", raising=False)
    # The line of each option under "with:", as the configuration loader records them.
    known = {"dsn": 3, "dsn_env": 4, "table": 5}
    lines = {k: known.get(k, 6) for k in options}
    with pytest.raises(ConfigError) as caught:
        build_builtin(
            "postgres-load",
            options,
            file="/etc/dropline/dropline.yaml",
            line=7,
            key="pipelines[0].stages[1]",
            lines=lines,
        )
    err = caught.value
    assert (err.file, err.line, err.key) == (
        "/etc/dropline/dropline.yaml",
        line,
        f"pipelines[0].stages[1].with.{key}",
    )
    assert text in err.detail


def test_without_psycopg_the_builtin_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where psycopg is not installed, a pipeline using postgres-load is refused at start-up."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(ConfigError) as caught:
        build_builtin(
            "postgres-load",
            {"dsn": "host=h", "table": "t"},
            file="d.yaml",
            line=9,
            key="pipelines[0].stages[0]",
            lines={"dsn": 10},
        )
    assert caught.value.line == 10
    assert caught.value.key == "pipelines[0].stages[0].with.dsn"
    assert "psycopg" in caught.value.detail and "not installed" in caught.value.detail


def test_server_down_or_silent_is_retried(tmp_path: Path) -> None:
    """A refused connection, and a server that never answers (connect_timeout), are ordinary
    failures: retried, not the file's fault."""
    path = write(tmp_path / "d.csv", "id\n1\n")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    down = stage_of({"dsn": f"host=127.0.0.1 port={port} user=x dbname=x", "table": "t"})
    outcome, error, _ = call_stage(down, context(path, "D"))
    assert outcome == "failed"
    assert "OperationalError" in error and "refused" in error.lower(), error

    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} user=x dbname=x"
        mute = stage_of({"dsn": dsn, "table": "t", "connect_timeout": "1s"})
        started = time.monotonic()
        outcome, error, _ = call_stage(mute, context(path, "D"))
        assert outcome == "failed"
        assert "timeout" in error.lower(), error
        assert time.monotonic() - started < 10


def test_daemon_loads_dropped_files(pg: PgServer, tree: Tree) -> None:
    """Through a real daemon: two CSV files dropped are loaded, each row tagged with its item;
    a file with a bad value fails at once with the line in its error."""
    pg.query("CREATE TABLE dropped (id bigint, name text, dropline_item text NOT NULL)")
    tree.write_config(
        f"""
- name: orders
  match: "*.csv"
  stages:
    - name: load
      builtin: postgres-load
      with:
        dsn: "{pg.dsn()}"
        table: dropped
"""
    )
    (tree.incoming / "one.csv").write_text("id,name\n1,ann\n2,bob\n")
    (tree.incoming / "two.csv").write_text("id,name\n3,cy\n4,di\n5,ed\n")
    (tree.incoming / "bad.csv").write_text("id,name\n6,fay\nseven,gus\n")
    assert run_until_idle(tree, timeout=30) == 0

    assert set(tree.archived()) == {"one.csv", "two.csv"}
    items = {bytes(name).decode(): item for item, name in tree.query("SELECT id, name FROM items")}
    loaded = pg.query("SELECT dropline_item, array_agg(id ORDER BY id) FROM dropped GROUP BY 1")
    assert dict(loaded) == {items["one.csv"]: [1, 2], items["two.csv"]: [3, 4, 5]}
    metadata = tree.query("SELECT metadata FROM items WHERE id = ?", (items["two.csv"],))
    assert json.loads(metadata[0][0]) == {"loaded_rows": 3, "table": "dropped"}

    error = json.loads((tree.failed / "bad.csv.error.json").read_text())
    assert "line 3: invalid input syntax for type bigint" in json.dumps(error)
    assert tree.query("SELECT count(*) FROM attempts WHERE item_id = ?", (items["bad.csv"],)) == [
        (1,)
    ]


def test_try_loads_in_a_transaction_rolled_back(pg: PgServer, tree: Tree, tmp_path: Path) -> None:
    """`dropline try`: the rows go through the server's own checks, and nothing stays:
    not the rows (a table that holds some keeps exactly those), not a table it created."""
    pg.query("CREATE TABLE tried (id bigint, name text, dropline_item text NOT NULL)")
    pg.query("INSERT INTO tried VALUES (1, 'kept', 'earlier')")
    tree.write_config(
        f"""
- name: orders
  match: "*.csv"
  stages:
    - name: load
      builtin: postgres-load
      with: {{dsn: "{pg.dsn()}", table: tried}}
- name: fresh
  match: "*.new"
  stages:
    - name: load
      builtin: postgres-load
      with: {{dsn: "{pg.dsn()}", table: never_made}}
"""
    )
    good = write(tmp_path / "good.csv", "id,name\n2,ann\n3,bob\n")
    doc = cli_json(tree, "try", str(good), schema="try")
    assert doc["outcome"] == "archived"
    assert doc["stages"][0]["metadata"]["would"] == (
        "load 2 rows into tried: loaded, then rolled back"
    )
    assert pg.query("SELECT id, name FROM tried") == [(1, "kept")]
    bad = write(tmp_path / "bad.csv", "id,name\n4,cy\nfive,di\n")
    doc = cli_json(tree, "try", str(bad), schema="try", expect=1)
    assert "line 3: invalid input syntax for type bigint" in doc["reason"]
    fresh = write(tmp_path / "x.new", "id\n1\n")
    assert cli_json(tree, "try", str(fresh), schema="try")["outcome"] == "archived"
    assert pg.query("SELECT to_regclass('never_made') IS NULL") == [(True,)]
    assert not tree.state_db.exists()


def test_a_statement_past_the_stage_timeout_is_cancelled_and_retried(
    pg: PgServer, tmp_path: Path
) -> None:
    """The stage's timeout becomes the transaction's statement_timeout: a load stuck behind a
    lock is cancelled by the server (an ordinary failure, retried), and nothing is kept."""
    import psycopg

    stage = stage_of({"dsn": pg.dsn(), "table": "locked"})
    path = write(tmp_path / "k.csv", "id\n1\n")
    assert stage(context(path, "K"))["loaded_rows"] == 1
    ctx = StageContext("K", path, "k.csv", "orders", "load", 2, {}, timeout=0.5)
    with psycopg.connect(pg.dsn()) as holder:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        outcome, error, _ = call_stage(stage, ctx)
        took = time.monotonic() - started
        holder.rollback()
    assert outcome == "failed"
    assert "QueryCanceled" in error and "statement timeout" in error, error
    assert 0.4 < took < 5
    assert rows_of(pg, "locked") == [("1", "K")]


def test_items_loading_at_once_into_a_new_table(pg: PgServer, tmp_path: Path) -> None:
    """Worker threads share one stage: eight items racing to create the same new table all
    load, each its own rows."""
    stage = stage_of({"dsn": pg.dsn(), "table": "raced"})
    paths = [write(tmp_path / f"r{i}.csv", f"id\n{i}\n{i + 100}\n") for i in range(8)]
    start = threading.Barrier(len(paths))
    results: dict[int, tuple[str, str, dict[str, Any]]] = {}

    def run(i: int) -> None:
        start.wait()
        results[i] = call_stage(stage, context(paths[i], f"T{i}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {i: r[0] for i, r in results.items()} == {i: "succeeded" for i in range(8)}, results
    counts = pg.query("SELECT dropline_item, count(*) FROM raced GROUP BY 1 ORDER BY 1")
    assert counts == [(f"T{i}", 2) for i in range(8)]


def test_a_held_connection_the_server_ended_is_replaced(pg: PgServer, tmp_path: Path) -> None:
    """The stage keeps its connection between files; when the server ends it in between
    (a restart, an administrator), the next file loads on a new connection, not retried."""
    stage = stage_of({"dsn": pg.dsn(), "table": "held"})
    first = write(tmp_path / "h1.csv", "id\n1\n")
    assert stage(context(first, "H1"))["loaded_rows"] == 1
    held = "SELECT pid FROM pg_stat_activity WHERE application_name = 'dropline'"
    pids = pg.query(held)
    assert len(pids) == 1  # the first file's connection, still open
    assert pg.query("SELECT pg_terminate_backend(%s)", (pids[0][0],)) == [(True,)]
    second = write(tmp_path / "h2.csv", "id\n2\n")
    assert stage(context(second, "H2"))["loaded_rows"] == 1
    rows = pg.query("SELECT id, dropline_item FROM held ORDER BY id")
    assert rows == [("1", "H1"), ("2", "H2")]
    assert pg.query(held) != pids
