"""``dropline retry`` and ``dropline history``: failed files sent through again, history kept.

Real daemons, a real database, a stage that fails until a marker file exists;
the stage writes one line per run, so double processing would show.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from .harness import Tree, cli_json, crash_run, run_cli, run_until_idle, wait_until


def _pipelines(tree: Tree) -> str:
    runs = tree.root / "runs.log"
    marker = tree.root / "fixed"
    script = (
        f'echo "$DROPLINE_ITEM_ID" >> {runs}; '
        f'test -e {marker} || {{ echo "not fixed yet" >&2; exit 65; }}'
    )
    return f"""
- name: picky
  match: "*.csv"
  stages:
    - name: check
      command: ["sh", "-c", {json.dumps(script)}]
"""


def _runs(tree: Tree) -> list[str]:
    path = tree.root / "runs.log"
    return path.read_text().split() if path.exists() else []


def _drop(tree: Tree, names: list[str]) -> None:
    for name in names:
        (tree.incoming / f".{name}.tmp").write_text(f"data of {name}\n")
        os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)


def _fail_files(tree: Tree, names: list[str]) -> dict[str, str]:
    """Drop NAMES and let them fail; returns their item ids by name."""
    tree.write_config(_pipelines(tree))
    _drop(tree, names)
    assert run_until_idle(tree) == 0
    assert sorted(tree.failed_files()) == sorted(names)
    return {os.fsdecode(n): i for i, n in tree.query("SELECT id, name FROM items")}


def test_retry_while_the_daemon_runs(tree: Tree, start_daemon: Any) -> None:
    """No double processing, no lost history; error.json goes with the file."""
    names = [f"r{n}.csv" for n in range(5)]
    ids = _fail_files(tree, names)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.root / "fixed").touch()

    one = cli_json(tree, "retry", ids["r0.csv"], schema="retry")
    assert one["applied_by"] == "daemon"
    assert one["items"] == [{"item": ids["r0.csv"], "result": "requeued", "requeued": True}]
    wait_until(lambda: "r0.csv" in tree.archived(), timeout=20, what="r0.csv archived")
    rest = cli_json(tree, "retry", "--all-failed", "--pipeline", "picky", schema="retry")
    assert rest["requeued"] == 4 and rest["not_requeued"] == 0
    wait_until(lambda: len(tree.archived()) == 5, timeout=20, what="all archived")
    # A file is in archive/ a moment before its row says so: wait for the rows.
    archived_rows = "SELECT count(*) FROM items WHERE state = 'archived'"
    wait_until(lambda: tree.query(archived_rows) == [(5,)], timeout=10, what="rows archived")

    assert sorted(tree.archived()) == sorted(names)
    assert list(tree.failed.iterdir()) == [], "no file and no error.json left in failed/"
    runs = _runs(tree)
    for name, item_id in ids.items():
        assert runs.count(item_id) == 2, f"{name}: the stage ran once per attempt, no more"
    # The same item, its earlier failure and the new success in one history.
    doc = cli_json(tree, "history", ids["r3.csv"], schema="history")
    (item,) = doc["items"]
    assert item["state"] == "archived" and item["where"] == "archive/r3.csv"
    steps = [(s["event"], s.get("outcome")) for s in item["timeline"]]
    assert steps == [
        ("claimed", None),
        ("stage", "failed"),
        ("failed", None),
        ("retry", None),
        ("stage", "succeeded"),
        ("archived", None),
    ], steps
    failed_step = item["timeline"][1]
    assert "not fixed yet" in failed_step["error"]
    assert "not fixed yet" in item["timeline"][2]["detail"]
    assert item["timeline"][3]["detail"] == "back from failed/r3.csv"
    # Retrying what is not failed (any more) is refused, and says why: exit 1.
    again = cli_json(tree, "retry", ids["r3.csv"], schema="retry", expect=1)
    assert again["items"][0]["result"] == "it is archived, not failed"
    assert daemon.find("file.requeued") and not daemon.find("daemon.failed")
    daemon.stop()


def test_retry_without_a_daemon_waits_in_working(tree: Tree) -> None:
    ids = _fail_files(tree, ["a.csv", "b.csv"])
    (tree.root / "fixed").touch()
    doc = cli_json(tree, "retry", "a.csv", schema="retry")
    assert doc["applied_by"] == "offline" and doc["requeued"] == 1
    assert sorted(p.name for p in tree.working.iterdir()) == ["a.csv"]
    assert sorted(p.name for p in tree.failed.iterdir()) == ["b.csv", "b.csv.error.json"]
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["a.csv"]
    assert _runs(tree).count(ids["a.csv"]) == 2


@pytest.mark.parametrize("point", ["retry.intent_committed", "retry.moved", "retry.synced"])
def test_retry_interrupted_by_a_crash_loses_nothing(tree: Tree, point: str) -> None:
    """Killed at each step of the move back from failed/: recovery completes it."""
    names = ["c1.csv", "c2.csv", "c3.csv"]
    ids = _fail_files(tree, names)
    (tree.root / "fixed").touch()
    crashed = run_cli(
        "retry",
        "--all-failed",
        "--config",
        str(tree.config),
        env={"DROPLINE_CRASH_AT": point},
    )
    assert crashed.returncode == -9, f"never reached {point}: {crashed.stderr}"
    for name in names:  # never a file in failed/ without its reason
        if (tree.failed / name).exists():
            assert (tree.failed / f"{name}.error.json").exists()
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == names
    assert list(tree.failed.iterdir()) == []
    assert list(tree.working.iterdir()) == []
    for item_id in ids.values():
        assert _runs(tree).count(item_id) == 2
        events = tree.query("SELECT event FROM events WHERE item_id = ?", (item_id,))
        assert events == [("failed",), ("retry",)]


def test_retry_inside_the_daemon_interrupted_by_a_crash(tree: Tree) -> None:
    """The daemon killed half-way through applying a retry request: the restart completes it."""
    ids = _fail_files(tree, ["d1.csv", "d2.csv"])
    (tree.root / "fixed").touch()
    # The requests left as the command leaves them; the daemon crashes applying them.
    import sqlite3
    import time

    db = sqlite3.connect(tree.state_db)
    with db:
        db.executemany(
            "INSERT INTO requests (kind, item_id, requested_at) VALUES ('retry', ?, ?)",
            [(i, time.time()) for i in ids.values()],
        )
    db.close()
    crash_run(tree, "retry.moved")
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["d1.csv", "d2.csv"]
    assert list(tree.failed.iterdir()) == []


def test_history_of_a_file_retried_after_a_crash(tree: Tree) -> None:
    """A crash while its stage ran: the interrupted attempt and the re-run are both there."""
    tree.write_config(_pipelines(tree))
    (tree.root / "fixed").touch()
    _drop(tree, ["h.csv"])
    crash_run(tree, "stage.finished")
    assert run_until_idle(tree) == 0
    doc = cli_json(tree, "history", "h.csv", schema="history")
    (item,) = doc["items"]
    stages = [(s["attempt"], s["outcome"]) for s in item["timeline"] if s["event"] == "stage"]
    assert stages == [(1, "interrupted"), (1, "succeeded")]
    assert item["state"] == "archived"
    assert item["sha256"] == __import__("hashlib").sha256(b"data of h.csv\n").hexdigest()
    human = run_cli("history", "h.csv", "--config", str(tree.config))
    assert human.returncode == 0 and "interrupted" in human.stdout and "archived" in human.stdout


def test_history_by_name_lists_every_item_newest_first(tree: Tree) -> None:
    tree.write_config(_pipelines(tree))
    (tree.root / "fixed").touch()
    for _ in range(3):
        _drop(tree, ["same.csv"])
        assert run_until_idle(tree) == 0
    doc = cli_json(tree, "history", "same.csv", schema="history")
    claimed = [i["claimed_at"] for i in doc["items"]]
    assert len(claimed) == 3 and claimed == sorted(claimed, reverse=True)
    assert len({i["where"] for i in doc["items"]}) == 3, "three different places in archive/"
    by_id = cli_json(tree, "history", doc["items"][1]["item"], schema="history")
    assert [i["item"] for i in by_id["items"]] == [doc["items"][1]["item"]]


def test_unknown_item_is_a_clear_error(tree: Tree, start_daemon: Any) -> None:
    _fail_files(tree, ["u.csv"])
    for command in (
        ["history", "nope.csv"],
        ["history", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        ["retry", "nope.csv"],
    ):
        result = run_cli(*command, "--config", str(tree.config))
        assert result.returncode == 1, (command, result.stderr)
        assert "nope.csv" in result.stderr or "01ARZ3NDEKTSV4RRFFQ69G5FAV" in result.stderr
        assert "Traceback" not in result.stderr
    usage = run_cli("retry", "--config", str(tree.config))
    assert usage.returncode == 2 and "--all-failed" in usage.stderr
    usage = run_cli("retry", "x", "--since", "2h", "--config", str(tree.config))
    assert usage.returncode == 2
    bad_since = run_cli(
        "retry", "--all-failed", "--since", "yesterday-ish", "--config", str(tree.config)
    )
    assert bad_since.returncode == 2 and "--since" in bad_since.stderr


def test_retry_since_selects_recent_failures(tree: Tree) -> None:
    ids = _fail_files(tree, ["old.csv", "new.csv"])
    import sqlite3
    import time

    db = sqlite3.connect(tree.state_db)
    with db:  # one failure a day old
        db.execute(
            "UPDATE items SET finished_at = ? WHERE id = ?", (time.time() - 86400, ids["old.csv"])
        )
    db.close()
    (tree.root / "fixed").touch()
    doc = cli_json(tree, "retry", "--all-failed", "--since", "1h", schema="retry")
    assert [i["item"] for i in doc["items"]] == [ids["new.csv"]]
    assert sorted(p.name for p in tree.working.iterdir()) == ["new.csv"]


def test_retry_by_name_and_by_id_answer_alike(tree: Tree) -> None:
    """An archived file: by its name or by its id, the same answer, and nothing said
    to be requeued when nothing was."""
    tree.write_config(_pipelines(tree))
    (tree.root / "fixed").touch()
    _drop(tree, ["done.csv"])
    assert run_until_idle(tree) == 0
    (item,) = [str(i) for (i,) in tree.query("SELECT id FROM items")]
    by_name = cli_json(tree, "retry", "done.csv", schema="retry", expect=1)
    by_id = cli_json(tree, "retry", item, schema="retry", expect=1)
    assert by_name == by_id
    assert by_id["items"] == [
        {"item": item, "result": "it is archived, not failed", "requeued": False}
    ]
    human = run_cli("retry", "done.csv", "--config", str(tree.config))
    assert human.returncode == 1
    assert "0 requeued" not in human.stdout
    assert "Nothing requeued: 1 not requeued" in human.stdout
    missing = run_cli("retry", "gone\\n.csv", "--config", str(tree.config))
    assert missing.returncode == 1 and 'file named "gone\\n.csv"' in missing.stderr
