"""``dropline prune``: retention beside a running daemon; the database stops growing."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .harness import Tree, cli_json, run_cli, run_until_idle, wait_until

PIPELINES = """
- name: bad
  match: "*.bad"
  stages:
    - name: reject
      command: ["sh", "-c", "exit 65"]
- name: all
  match: "*"
  stages: []
"""


def _drop(tree: Tree, prefix: str, count: int, suffix: str = ".dat") -> list[str]:
    names = []
    for n in range(count):
        name = f"{prefix}{n:05d}{suffix}"
        (tree.incoming / f".{name}.tmp").write_bytes(b"y" * 200)
        os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)
        names.append(name)
    return names


def _age(tree: Tree, seconds: float) -> None:
    """Make every finished row SECONDS older (instead of waiting days for retention)."""
    import sqlite3

    db = sqlite3.connect(tree.state_db)
    with db:
        db.execute(
            "UPDATE items SET finished_at = finished_at - ? WHERE finished_at IS NOT NULL",
            (seconds,),
        )
    db.close()


def test_prune_dry_run_then_prune(tree: Tree) -> None:
    tree.write_config(PIPELINES, archive_layout="daily")
    _drop(tree, "a", 20)
    _drop(tree, "b", 3, ".bad")
    assert run_until_idle(tree) == 0
    _age(tree, 40 * 86400)
    _drop(tree, "new", 5)
    assert run_until_idle(tree) == 0
    old_day = tree.archive / "2020-01-01"
    old_day.mkdir()
    kept_day = tree.archive / "2020-01-02"
    kept_day.mkdir()
    (kept_day / "hand-made.txt").write_text("not dropline's")

    dry = cli_json(tree, "prune", "--older-than", "30d", "--dry-run", schema="prune")
    assert (dry["archived"], dry["failed"], dry["bytes"]) == (20, 0, 20 * 200)
    assert len(tree.archived()) == 26 and old_day.exists(), "a dry run deletes nothing"

    done = cli_json(tree, "prune", "--older-than", "30d", schema="prune")
    assert (done["archived"], done["failed"], done["bytes"]) == (20, 0, 20 * 200)
    assert done["date_folders_removed"] == 1
    assert sorted(tree.archived()) == sorted(
        [f"new{n:05d}.dat" for n in range(5)] + ["hand-made.txt"]
    )
    assert not old_day.exists() and kept_day.exists()
    assert len(tree.failed_files()) == 3, "failed/ is kept without --failed"
    assert tree.query("SELECT count(*) FROM items") == [(8,)]

    with_failed = cli_json(tree, "prune", "--older-than", "30d", "--failed", schema="prune")
    assert with_failed["failed"] == 3
    assert list(tree.failed.iterdir()) == [], "the files and their error.json are gone"
    assert tree.query("SELECT state, count(*) FROM items GROUP BY state") == [("archived", 5)]
    assert tree.query("SELECT count(*) FROM attempts") == [(0,)], "attempts went with their items"

    human = run_cli("prune", "--older-than", "30d", "--dry-run", "--config", str(tree.config))
    assert human.returncode == 0 and "Would delete 0 archived files" in human.stdout


def test_prune_while_the_daemon_archives(tree: Tree, start_daemon: Any) -> None:
    """Files and rows go together, in batches, while new files keep arriving."""
    tree.write_config(PIPELINES)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    first = _drop(tree, "p", 1500)
    wait_until(lambda: len(tree.archived()) == 1500, timeout=60, what="first wave archived")
    # A file is in archive/ a moment before its row says so: wait for the rows.
    archived_rows = "SELECT count(*) FROM items WHERE state = 'archived'"
    wait_until(lambda: tree.query(archived_rows) == [(1500,)], timeout=10, what="rows archived")
    stop = threading.Event()
    dropped: list[str] = []

    def keep_dropping() -> None:
        n = 0
        while not stop.is_set():
            dropped.extend(_drop(tree, f"q{n:03d}-", 20))
            n += 1
            time.sleep(0.01)

    dropper = threading.Thread(target=keep_dropping)
    dropper.start()
    try:
        doc = cli_json(tree, "prune", "--older-than", "0s", schema="prune")
    finally:
        stop.set()
        dropper.join()
    assert doc["archived"] >= 1500
    wait_until(
        lambda: not list(tree.incoming.iterdir()) and not list(tree.working.iterdir()),
        timeout=60,
        what="the second wave drained",
    )
    daemon.stop()
    # Every file ever dropped is either pruned (file and row gone) or archived (file and row).
    archived = set(tree.archived())
    rows = {
        os.fsdecode(n) for (n,) in tree.query("SELECT name FROM items WHERE state = 'archived'")
    }
    assert archived == rows
    assert set(first) - archived == set(first), "the first wave was pruned"
    assert archived <= set(dropped)
    assert tree.query("SELECT count(*) FROM items WHERE state = 'pruning'") == [(0,)]
    assert not daemon.find("daemon.failed")
    assert not [e for e in daemon.events() if e.get("level") in ("error", "critical")]


def test_database_stops_growing_once_retention_is_reached(tree: Tree) -> None:
    """Deleted rows free pages that the next files reuse: the file size levels off."""
    tree.write_config(PIPELINES)

    def cycle(n: int) -> int:
        _drop(tree, f"c{n}-", 1000)
        assert run_until_idle(tree) == 0
        doc = cli_json(tree, "prune", "--older-than", "0s", schema="prune")
        assert doc["archived"] == 1000
        pages = tree.query("PRAGMA page_count")[0][0]
        return int(pages)

    sizes = [cycle(n) for n in range(4)]
    assert sizes[3] <= sizes[1] * 1.1, f"pages after each cycle: {sizes}"


def test_bad_duration_is_a_usage_error(tree: Tree) -> None:
    tree.write_config(PIPELINES)
    result = run_cli("prune", "--older-than", "soon", "--config", str(tree.config))
    assert result.returncode == 2
    assert "--older-than" in result.stderr and "Traceback" not in result.stderr
