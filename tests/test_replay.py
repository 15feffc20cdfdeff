"""``dropline replay``: archived files copied (never moved) into working/ as new items
linked to the old, run again from the first stage or from the one named; through a
running daemon, without one, and across crashes at each step.

Real daemons, a real SQLite target, a command stage that writes one line per run
(item and stage), so a file run twice, or a stage run when it should not, shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, cli_json, run_cli, run_until_idle, wait_until
from .test_filesystems import Mounter
from .test_filesystems import mount_tmpfs as mount_tmpfs  # a fixture


def _pipelines(tree: Tree) -> str:
    runs = tree.root / "runs.log"
    script = f'echo "$DROPLINE_ITEM_ID $DROPLINE_STAGE" >> {runs}'
    return f"""
- name: orders
  match: "*.csv"
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns: [{{name: id, type: integer}}]
    - name: load
      builtin: sqlite-load
      with: {{database: {tree.root / "target.db"}, table: orders}}
    - name: count
      command: ["sh", "-c", {json.dumps(script)}]
- name: shaped
  match: "*.txt"
  stages:
    - name: clean
      builtin: transform
      with: {{rename: {{a: b}}}}
    - name: count
      command: ["true"]
"""


def _runs(tree: Tree) -> list[tuple[str, str]]:
    path = tree.root / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.split()[0], line.split()[1]) for line in lines]


def _loaded(tree: Tree) -> dict[str, int]:
    db = sqlite3.connect(tree.root / "target.db")
    try:
        return dict(db.execute("SELECT dropline_item, count(*) FROM orders GROUP BY 1"))
    finally:
        db.close()


def _archive(tree: Tree, names: dict[str, str]) -> dict[str, str]:
    """Drop NAMES (name -> content) and let them be archived; their item ids by name."""
    tree.write_config(_pipelines(tree))
    for name, text in names.items():
        (tree.incoming / f".{name}.tmp").write_text(text)
        os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == sorted(names)
    return {os.fsdecode(n): i for i, n in tree.query("SELECT id, name FROM items")}


def _archive_files(tree: Tree) -> list[Path]:
    return sorted(p for p in tree.archive.rglob("*") if p.is_file())


def test_replay_without_a_daemon_copies_and_links(tree: Tree) -> None:
    ids = _archive(tree, {"a.csv": "id\n1\n2\n", "b.csv": "id\n3\n"})
    before = {p: p.read_bytes() for p in _archive_files(tree)}
    doc = cli_json(tree, "replay", "a.csv", schema="replay")
    assert doc["applied_by"] == "offline" and doc["replayed"] == 1
    (entry,) = doc["items"]
    new = entry["new_item"]
    assert entry == {"item": ids["a.csv"], "result": f"replayed as {new}", "new_item": new}
    # The archived file stays, unchanged; the copy waits in working/.
    assert {p: p.read_bytes() for p in _archive_files(tree)} == before
    assert [p.name for p in tree.working.iterdir()] == ["a.csv"]
    assert run_until_idle(tree) == 0
    # Both ends in archive/: the old untouched, the new beside it under a name of its own.
    files = _archive_files(tree)
    assert len(files) == 3 and all(before[p] == p.read_bytes() for p in before)
    assert list(tree.working.iterdir()) == []
    assert _loaded(tree) == {ids["a.csv"]: 2, ids["b.csv"]: 1, new: 2}
    assert [s for i, s in _runs(tree) if i == new] == ["count"]
    # Each history names the other.
    old_doc = cli_json(tree, "history", ids["a.csv"], schema="history")
    steps = old_doc["items"][0]["timeline"]
    assert (steps[-1]["event"], steps[-1]["detail"]) == ("replayed", f"as {new}")
    new_doc = cli_json(tree, "history", new, schema="history")
    (item,) = new_doc["items"]
    assert item["state"] == "archived"
    first = item["timeline"][0]
    assert first["event"] == "replay"
    assert first["detail"].startswith(f"of {ids['a.csv']} (archive/")
    assert [s["event"] for s in item["timeline"]].count("claimed") == 0


def test_replay_from_a_stage_runs_only_from_there(tree: Tree) -> None:
    ids = _archive(tree, {"a.csv": "id\n1\n"})
    doc = cli_json(tree, "replay", ids["a.csv"], "--from-stage", "load", schema="replay")
    new = doc["items"][0]["new_item"]
    assert run_until_idle(tree) == 0
    stages = tree.query("SELECT stage FROM attempts WHERE item_id = ? ORDER BY id", (new,))
    assert stages == [("load",), ("count",)]
    assert _loaded(tree) == {ids["a.csv"]: 1, new: 1}
    events = tree.query("SELECT detail FROM events WHERE item_id = ?", (new,))
    assert events[0][0].endswith('from stage "load"')


def test_what_cannot_be_replayed_says_why(tree: Tree) -> None:
    ids = _archive(tree, {"a.csv": "id\n1\n", "b.csv": "id\n2\n", "x.txt": "a\n1\n"})
    # A stage no pipeline has: a usage error, nothing asked.
    wrong = run_cli("replay", "a.csv", "--from-stage", "lod", "--config", str(tree.config))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert 'no pipeline has a stage "lod" (stages: clean, count, load, validate)' in wrong.stderr
    # After a transform, whose output went with the old item.
    doc = cli_json(tree, "replay", "x.txt", "--from-stage", "count", schema="replay", expect=1)
    assert doc["items"][0]["result"].startswith('stage "clean" derives the data')
    # A stage of another pipeline.
    doc = cli_json(tree, "replay", "a.csv", "--from-stage", "clean", schema="replay", expect=1)
    assert doc["items"][0]["result"] == (
        'pipeline "orders" has no stage "clean" (its stages: validate, load, count)'
    )
    # An archived file removed from archive/.
    next(p for p in _archive_files(tree) if p.name == "b.csv").unlink()
    doc = cli_json(tree, "replay", ids["b.csv"], schema="replay", expect=1)
    assert doc["items"][0]["result"].endswith("b.csv is no longer there")
    assert doc["not_replayed"] == 1 and doc["items"][0]["new_item"] is None
    assert list(tree.working.iterdir()) == []
    assert tree.query("SELECT count(*) FROM items") == [(3,)]


def test_a_failed_file_is_for_retry(tree: Tree) -> None:
    tree.write_config(_pipelines(tree))
    (tree.incoming / "bad.csv").write_text("id\nx\n")
    assert run_until_idle(tree) == 0
    doc = cli_json(tree, "replay", "bad.csv", schema="replay", expect=1)
    assert doc["items"][0]["result"] == (
        "it is failed, not archived (dropline retry sends a failed file again)"
    )


def test_replay_by_glob_while_the_daemon_runs(tree: Tree, start_daemon: Any) -> None:
    ids = _archive(tree, {"a1.csv": "id\n1\n", "a2.csv": "id\n2\n", "b.csv": "id\n3\n"})
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    doc = cli_json(tree, "replay", "--glob", "a*.csv", schema="replay")
    assert doc["applied_by"] == "daemon" and doc["replayed"] == 2
    assert [i["item"] for i in doc["items"]] == [ids["a1.csv"], ids["a2.csv"]]
    new = {i["new_item"] for i in doc["items"]}
    archived = "SELECT count(*) FROM items WHERE state = 'archived'"
    wait_until(lambda: tree.query(archived) == [(5,)], timeout=20, what="replays archived")
    told = daemon.find("file.replayed")
    assert {e["item"] for e in told} == new
    assert {e["replay_of"] for e in told} == {ids["a1.csv"], ids["a2.csv"]}
    assert set(_loaded(tree)) == set(ids.values()) | new
    # Text for people: what was done, and how to follow it.
    text = run_cli("replay", "b.csv", "--config", str(tree.config))
    assert text.returncode == 0 and "1 replayed (the daemon runs them now)" in text.stdout
    daemon.stop()


@pytest.mark.parametrize("point", ["replay.intent_committed", "replay.copied", "replay.synced"])
def test_replay_interrupted_by_a_crash_loses_nothing(tree: Tree, point: str) -> None:
    """Killed at each step of the copy: recovery completes it, once, and the archived
    files stay as they were."""
    ids = _archive(tree, {"c1.csv": "id\n1\n", "c2.csv": "id\n2\n"})
    before = {p: p.read_bytes() for p in _archive_files(tree)}
    crashed = run_cli(
        "replay", "--glob", "c*.csv", "--config", str(tree.config),
        env={"DROPLINE_CRASH_AT": point},
    )  # fmt: skip
    assert crashed.returncode == -9, f"never reached {point}: {crashed.stderr}"
    assert run_until_idle(tree) == 0
    assert all(p.read_bytes() == data for p, data in before.items())
    assert len(_archive_files(tree)) == 4
    assert list(tree.working.iterdir()) == []  # no copy, no temporary left
    new = [i for (i,) in tree.query("SELECT id FROM items") if i not in ids.values()]
    assert len(new) == 2
    assert tree.query("SELECT count(*) FROM items WHERE state = 'archived'") == [(4,)]
    loaded = _loaded(tree)
    assert all(loaded[i] == 1 for i in [*ids.values(), *new])


@pytest.mark.parametrize("point", ["replay.intent_committed", "replay.copied", "replay.synced"])
def test_a_daemon_killed_while_it_replays_replays_once(
    tree: Tree, start_daemon: Any, point: str
) -> None:
    """The daemon applies the request and is killed at a step of the copy: the request
    was answered with the new rows, so the next start completes that one replay and
    makes no second one."""
    ids = _archive(tree, {"k.csv": "id\n1\n"})
    daemon = start_daemon(env={"DROPLINE_CRASH_AT": point})
    daemon.wait_event("daemon.ready")
    asked = run_cli("replay", "k.csv", "--wait", "10", "--json", "--config", str(tree.config))
    assert daemon.wait(20) == -9, f"never reached {point}"
    new = json.loads(asked.stdout)["items"][0]["new_item"]
    assert new is not None, asked.stdout  # answered before the kill
    assert run_until_idle(tree) == 0
    assert tree.query("SELECT id FROM items WHERE replay_of = ?", (ids["k.csv"],)) == [(new,)]
    assert _loaded(tree) == {ids["k.csv"]: 1, new: 1}
    assert len(_archive_files(tree)) == 2 and list(tree.working.iterdir()) == []


def test_a_replay_cut_short_is_neither_repeated_nor_shares_its_name(tree: Tree) -> None:
    """Killed after its row, before its copy: asked again, the replay is refused as under
    way; another item of the same name gets a name of its own in working/; the next
    start completes both, each on its own file."""
    tree.write_config(_pipelines(tree))
    for text in ("id\n1\n", "id\n2\n"):  # two items named s.csv, archived in turn
        (tree.incoming / "s.csv").write_text(text)
        assert run_until_idle(tree) == 0
    first, second = [i for (i,) in tree.query("SELECT id FROM items ORDER BY created_at")]
    crashed = run_cli(
        "replay", first, "--config", str(tree.config),
        env={"DROPLINE_CRASH_AT": "replay.intent_committed"},
    )  # fmt: skip
    assert crashed.returncode == -9
    # The row on its way reads as such (the schemas know the state).
    status = cli_json(tree, "status", schema="status")
    assert status["states"].get("replaying") == 1, status["states"]
    (cut,) = cli_json(tree, "history", "--outcome", "unfinished", schema="history")["items"]
    assert cut["state"] == "replaying"
    again = cli_json(tree, "replay", first, schema="replay", expect=1)
    assert again["items"][0]["result"].startswith("a replay of it is under way (item ")
    other = cli_json(tree, "replay", second, schema="replay")
    assert other["replayed"] == 1
    names = {
        row[0] for row in tree.query("SELECT working_name FROM items WHERE replay_of IS NOT NULL")
    }
    assert len(names) == 2, names
    assert run_until_idle(tree) == 0
    replays = dict(tree.query("SELECT replay_of, id FROM items WHERE replay_of IS NOT NULL"))
    assert set(replays) == {first, second}
    # Each replay loaded the rows of its own file.
    db = sqlite3.connect(tree.root / "target.db")
    rows = dict(db.execute("SELECT dropline_item, id FROM orders"))
    db.close()
    assert rows[replays[first]] == 1 and rows[replays[second]] == 2


def test_no_room_for_the_copy_refuses_or_abandons_it(tree: Tree, mount_tmpfs: Mounter) -> None:
    """No room in working/ for the copy: refused when asked; and when the room went
    between the row and the copy (a crash, then a fuller disk), the start abandons that
    replay, says so in the old item's history, and runs on."""
    big = "id\n" + "1000000\n" * 150_000  # 1.2 MB
    ids = _archive(tree, {"big.csv": big, "small.csv": "id\n1\n"})
    mount_tmpfs(tree.working, "size=1m")  # working/, empty now, on a small disk
    # (under the default min_free_space of 64 MiB, the daemon would claim nothing)
    tree.write_config(_pipelines(tree), min_free_space="1KiB")
    doc = cli_json(tree, "replay", "big.csv", schema="replay", expect=1)
    assert doc["items"][0]["result"].startswith("no room in working/ for its copy (")
    crashed = run_cli(
        "replay", "small.csv", "--config", str(tree.config),
        env={"DROPLINE_CRASH_AT": "replay.intent_committed"},
    )  # fmt: skip
    assert crashed.returncode == -9
    filler = tree.working / ".filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * (1 << 20))  # the rest of working/'s room, taken meanwhile
    daemon = DaemonProcess(tree, args=("--exit-when-idle",))
    try:
        assert daemon.wait(30) == 0, daemon.text()
    finally:
        daemon.kill()
    assert daemon.find("replay.abandoned")
    assert tree.query("SELECT count(*) FROM items WHERE replay_of IS NOT NULL") == [(0,)]
    events = tree.query("SELECT detail FROM events WHERE item_id = ?", (ids["small.csv"],))
    assert any("abandoned" in d and "no room" in d for (d,) in events), events
