"""The example configuration end to end: config/dropline.yaml with config/samples, as `make run`.

A good file's rows are loaded (and can be queried), a bad one ends in failed/
with the lines that are wrong, and the pipeline's on_failure step runs.
Also: a load interrupted by a crash leaves each item's rows exactly once.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from .harness import REPO, Tree, crash_run, run_until_idle

SAMPLES = REPO / "config" / "samples"


def _example_config(tree: Tree) -> Path:
    """config/dropline.yaml with the paths `make run` rewrites, pointed at TREE."""
    text = (REPO / "config" / "dropline.yaml").read_text()
    text = text.replace("/opt/automation/data", str(tree.data))
    text = text.replace("/var/lib/dropline", str(tree.state_db.parent))
    text = text.replace("/opt/automation/pipelines", str(REPO / "config" / "pipelines"))
    text = text.replace("settle_time: 2s", "settle_time: 0.2s")
    tree.config.write_text(text + "log_format: json\n")
    return tree.state_db.parent / "orders.db"


def _events(tree: Tree) -> list[dict[str, Any]]:
    out = []
    for line in (tree.root / "daemon.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_example_pipeline_loads_good_files_and_fails_the_bad_one(tree: Tree) -> None:
    orders_db = _example_config(tree)
    samples = sorted(SAMPLES.glob("*.csv"))
    assert any("bad" in p.name for p in samples) and len(samples) >= 3
    for sample in samples:
        shutil.copyfile(sample, tree.incoming / sample.name)
    assert run_until_idle(tree) == 0

    good = [p.name for p in samples if "bad" not in p.name]
    assert sorted(tree.archived()) == sorted(good)
    for name in good:  # archive/ keeps what was dropped, byte for byte
        assert tree.archived()[name].read_bytes() == (SAMPLES / name).read_bytes()
    con = sqlite3.connect(orders_db)
    try:
        rows = con.execute(
            "SELECT order_id, customer, amount, currency, order_date FROM orders ORDER BY order_id"
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        (1001, "Ada Lovelace", 120.5, "EUR", "2026-11-01"),
        (1002, "Grace Hopper", 99.99, "USD", "2026-11-01"),
        (1003, "Alan Turing", 15, "GBP", "2026-11-01"),
        (2001, "Edsger Dijkstra", 42, "EUR", "2026-11-02"),  # trimmed; its duplicate dropped
        (2002, "Barbara Liskov", 7.25, "USD", "2026-11-02"),
        (2003, "Hamming, Richard", 300, "EUR", "2026-11-02"),
    ]

    (bad,) = [p.name for p in samples if "bad" in p.name]
    assert sorted(tree.failed_files()) == [bad]
    error = json.loads((tree.failed / f"{bad}.error.json").read_text())
    assert error["stage"] == "validate"
    assert 'line 3, column "amount": "abc" is not a decimal' in error["error"]
    assert 'line 4, column "currency": "YEN" is not one of EUR, USD, GBP' in error["error"]

    events = _events(tree)
    loaded = [e for e in events if e.get("event") == "orders.loaded"]
    assert sorted(e["rows"] for e in loaded) == [3, 3]
    rejected = [e for e in events if e.get("event") == "orders.rejected"]
    assert len(rejected) == 1 and "abc" in rejected[0]["reason"]
    # The on_failure step is in the file's history, after the failing stage.
    attempts = tree.query(
        "SELECT a.stage, a.outcome FROM attempts a JOIN items i ON i.id = a.item_id "
        "WHERE i.name = ? ORDER BY a.id",
        (bad.encode(),),
    )
    assert attempts == [("validate", "failed"), ("announce-failure", "succeeded")]
    assert not list((tree.state_db.parent / "scratch").glob("*")), "scratch folders are gone"


LOAD_ONLY = """
- name: big
  match: "*.csv"
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns: [{name: id, type: integer}, {name: v, type: decimal}]
    - name: load
      builtin: sqlite-load
      with: {database: DB, table: big}
"""


def _big_csv(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("id,v\n")
        for n in range(rows):
            f.write(f"{n},{n}.5\n")


def test_load_interrupted_by_a_crash_leaves_rows_exactly_once(
    tree: Tree, start_daemon: Any
) -> None:
    db = tree.root / "big.db"
    tree.write_config(LOAD_ONLY.replace("DB", str(db)))
    rows = 100_000
    _big_csv(tree.root / "big.csv", rows)
    shutil.copyfile(tree.root / "big.csv", tree.incoming / "a.csv")

    # Killed while the load runs: SQLite rolls the half-done transaction back.
    daemon = start_daemon()
    daemon.wait_event("stage.started", timeout=30, stage="load")
    time.sleep(0.05)  # aims the kill into the load's transaction; any moment must be safe
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    # Killed after the load committed but before its end was recorded: it runs again.
    shutil.copyfile(tree.root / "big.csv", tree.incoming / "b.csv")
    crash_run(tree, "stage.finished#3")
    assert run_until_idle(tree) == 0

    assert sorted(tree.archived()) == ["a.csv", "b.csv"]
    con = sqlite3.connect(db)
    try:
        counts = con.execute(
            "SELECT dropline_item, count(*), count(DISTINCT id) FROM big GROUP BY dropline_item"
        ).fetchall()
    finally:
        con.close()
    assert len(counts) == 2
    assert all(n == rows and distinct == rows for _, n, distinct in counts), counts
    loads = tree.query("SELECT count(*) FROM attempts WHERE stage = 'load'")[0][0]
    assert loads >= 3, "the interrupted loads ran again"
