"""``duplicates: skip``: a file whose content an earlier file of the pipeline had ends
unrun (in archive/, failed/ or a folder of its own), its history pointing to that item;
nothing is loaded twice, across a crash between the judgement and the end too.
``process`` (the default) runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dropline import crashpoints
from dropline.errors import FatalIOError
from dropline.loop.duplicates import WAIT
from dropline.spool.dirs import SUBDIRS, Dirs, Settings
from dropline.spool.ends import Ends

from .harness import Tree, cli_json, crash_run, run_cli, run_until_idle


def _pipelines(tree: Tree, duplicates: str = "skip", window: str = "30d") -> str:
    runs = tree.root / "runs.log"
    return f"""
- name: orders
  match: "*.csv"
  duplicates: {duplicates}
  duplicate_window: {window}
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns: [{{name: order_id, type: integer}}]
    - name: load
      builtin: sqlite-load
      with: {{database: {tree.root / "target.db"}, table: orders}}
    - name: count
      command: ["sh", "-c", {json.dumps(f'echo "$DROPLINE_ITEM_ID" >> {runs}')}]
"""


def _drop(tree: Tree, name: str, text: str) -> None:
    (tree.incoming / f".{name}.tmp").write_text(text)
    os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)


def _loaded(tree: Tree) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tree.root / "target.db")
    try:
        return sorted(db.execute("SELECT order_id FROM orders"))
    finally:
        db.close()


def _ids(tree: Tree) -> dict[str, str]:
    return {os.fsdecode(n): i for i, n in tree.query("SELECT id, name FROM items")}


def test_the_same_content_dropped_again_is_archived_unrun(tree: Tree) -> None:
    tree.write_config(_pipelines(tree))
    _drop(tree, "a.csv", "order_id\n1001\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "a-again.csv", "order_id\n1001\n")  # same bytes, another name
    _drop(tree, "b.csv", "order_id\n1002\n")
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["a-again.csv", "a.csv", "b.csv"]
    assert _loaded(tree) == [(1001,), (1002,)]  # order 1001 once
    ids = _ids(tree)
    runs = (tree.root / "runs.log").read_text().split()
    assert ids["a-again.csv"] not in runs and len(runs) == 2
    (item,) = cli_json(tree, "history", "a-again.csv", schema="history")["items"]
    assert item["state"] == "archived" and item["reason"] == f"duplicate of {ids['a.csv']}"
    assert item["attempts"] == 0
    events = [(s["event"], s.get("detail")) for s in item["timeline"]]
    assert ("duplicate", f"of {ids['a.csv']} (the same SHA-256)") in events


def test_twins_dropped_together_run_once(tree: Tree) -> None:
    """Two files of the same content in one batch: the second waits for the first,
    then is a duplicate of it."""
    tree.write_config(_pipelines(tree))
    for n in range(3):
        _drop(tree, f"t{n}.csv", "order_id\n7\n")
    assert run_until_idle(tree) == 0
    assert len(tree.archived()) == 3
    assert _loaded(tree) == [(7,)]
    reasons = [r for (r,) in tree.query("SELECT reason FROM items ORDER BY created_at")]
    assert sum(1 for r in reasons if r and r.startswith("duplicate of ")) == 2
    # Judged as the first ended, not at the next look WAIT later.
    logged = [json.loads(line) for line in (tree.root / "daemon.log").read_text().splitlines()]
    at = {
        (e["event"], e["file"]): datetime.fromisoformat(e["timestamp"])
        for e in logged
        if e.get("event") in ("file.archived", "file.duplicate")
    }
    ran = next(e["file"] for e in logged if e.get("event") == "stage.succeeded")
    judged = [t for (event, _), t in at.items() if event == "file.duplicate"]
    assert len(judged) == 2
    waited = max(judged) - at[("file.archived", ran)]
    assert waited.total_seconds() < WAIT - 1, waited


def test_a_file_sent_again_after_a_failure_runs(tree: Tree) -> None:
    tree.write_config(_pipelines(tree))
    bad = "order_id\nx\n"
    _drop(tree, "bad.csv", bad)
    assert run_until_idle(tree) == 0
    assert list(tree.failed_files()) == ["bad.csv"]
    _drop(tree, "bad-again.csv", bad)  # the earlier one failed: this one is judged anew
    assert run_until_idle(tree) == 0
    assert sorted(tree.failed_files()) == ["bad-again.csv", "bad.csv"]


def test_process_runs_every_file_and_the_window_bounds_skip(tree: Tree) -> None:
    tree.write_config(_pipelines(tree, duplicates="process"))
    _drop(tree, "p1.csv", "order_id\n5\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "p2.csv", "order_id\n5\n")
    assert run_until_idle(tree) == 0
    assert _loaded(tree) == [(5,), (5,)]  # today's behaviour: loaded twice
    # A window that has passed: the earlier file no longer counts.
    tree.write_config(_pipelines(tree, window="1ms"))
    _drop(tree, "p3.csv", "order_id\n5\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "p4.csv", "order_id\n5\n")
    assert run_until_idle(tree) == 0
    assert len(_loaded(tree)) == 4


@pytest.mark.parametrize("point", ["stage.start_committed", "finish.intent_committed"])
def test_a_crash_between_the_judgement_and_the_end_loads_nothing_twice(
    tree: Tree, point: str
) -> None:
    tree.write_config(_pipelines(tree))
    _drop(tree, "c.csv", "order_id\n9\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "c-again.csv", "order_id\n9\n")
    crash_run(tree, point)
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["c-again.csv", "c.csv"]
    assert _loaded(tree) == [(9,)]
    ids = _ids(tree)
    reason = tree.query("SELECT reason FROM items WHERE id = ?", (ids["c-again.csv"],))
    assert reason == [(f"duplicate of {ids['c.csv']}",)]


def test_duplicates_can_end_in_failed_for_someone_to_look_at(tree: Tree) -> None:
    """duplicates_to: failed: the duplicate waits in failed/ with its reason beside it,
    unrun (no on_failure either: nothing of it failed)."""
    tree.write_config(
        _pipelines(tree).replace("  duplicate_window: 30d\n", "  duplicates_to: failed\n")
    )
    _drop(tree, "e.csv", "order_id\n11\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "e-again.csv", "order_id\n11\n")
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["e.csv"] and list(tree.failed_files()) == ["e-again.csv"]
    error = json.loads((tree.failed / "e-again.csv.error.json").read_text())
    assert error["error"] == f"duplicate of {_ids(tree)['e.csv']}"
    assert _loaded(tree) == [(11,)]
    # Looked at and meant: `dropline retry` sends it through, not to failed/ again.
    assert cli_json(tree, "retry", "e-again.csv", schema="retry")["requeued"] == 1
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["e-again.csv", "e.csv"] and not tree.failed_files()
    assert _loaded(tree) == [(11,), (11,)]


def _to_folder(tree: Tree, folder: str) -> str:
    return _pipelines(tree).replace("  duplicate_window: 30d\n", f"  duplicates_to: {folder}\n")


def test_duplicates_can_end_in_a_folder_of_their_own(tree: Tree) -> None:
    """duplicates_to: NAME: the folder NAME of the data folder (made when needed), laid out
    as archive/ is; history, the log and the journal's sentence say where; a replay
    copies from there and prune deletes there, and its empty past date folders."""
    tree.write_config(_to_folder(tree, "duplicates"), archive_layout="daily")
    _drop(tree, "f.csv", "order_id\n12\n")
    assert run_until_idle(tree) == 0
    dups = tree.data / "duplicates"
    assert not dups.exists()  # made by the daemon at the first duplicate, as its user
    _drop(tree, "f-again.csv", "order_id\n12\n")
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["f.csv"] and list(tree.failed_files()) == []
    (day,) = [p.name for p in dups.iterdir()]
    assert [p.name for p in (dups / day).iterdir()] == ["f-again.csv"]
    assert _loaded(tree) == [(12,)]
    ids = _ids(tree)
    (item,) = cli_json(tree, "history", "f-again.csv", schema="history")["items"]
    assert item["state"] == "archived" and item["where"] == f"duplicates/{day}/f-again.csv"
    logged = [json.loads(line) for line in (tree.root / "daemon.log").read_text().splitlines()]
    (end,) = [e for e in logged if e.get("event") == "file.archived" and e["item"] == item["item"]]
    assert end["to"] == f"../duplicates/{day}/f-again.csv"  # relative to archive/, as ever
    from dropline.messages import describe

    assert describe("file.archived", end).startswith(
        f"archived f-again.csv to duplicates/{day}/f-again.csv"
    )
    # Not a duplicate after all: replayed from its folder (which keeps it), it runs.
    doc = cli_json(tree, "replay", ids["f-again.csv"], schema="replay")
    assert doc["replayed"] == 1
    assert run_until_idle(tree) == 0
    assert _loaded(tree) == [(12,), (12,)]
    assert sorted(tree.archived()) == ["f-again.csv", "f.csv"]  # the replay ran: archive/
    assert (dups / day / "f-again.csv").exists()
    # Retention deletes there too, and empty date folders there once past.
    db = sqlite3.connect(tree.state_db)
    with db:
        db.execute("UPDATE items SET finished_at = finished_at - 3 * 86400")
    db.close()
    (dups / "2020-01-01").mkdir()
    done = cli_json(tree, "prune", "--older-than", "1d", schema="prune")
    assert done["archived"] == 3 and done["date_folders_removed"] >= 1
    assert [p.name for p in dups.iterdir()] == [day]
    assert list((dups / day).iterdir()) == [] and tree.archived() == {}


def test_a_crash_before_the_move_to_the_duplicates_folder_ends_it_there(tree: Tree) -> None:
    tree.write_config(_to_folder(tree, "dups"))
    _drop(tree, "g.csv", "order_id\n13\n")
    assert run_until_idle(tree) == 0
    _drop(tree, "g-again.csv", "order_id\n13\n")
    crash_run(tree, "finish.intent_committed")  # recorded "finishing" to dups/, not moved
    assert run_until_idle(tree) == 0
    assert sorted(p.name for p in (tree.data / "dups").rglob("*.csv")) == ["g-again.csv"]
    assert sorted(tree.archived()) == ["g.csv"] and _loaded(tree) == [(13,)]


def test_the_duplicates_folder_emptied_or_renamed_while_running(
    tree: Tree, start_daemon: Any
) -> None:
    """An operator clears out the duplicates looked at (rm -r, mv) while the daemon
    runs: the next one ends in the folder named, made again; so does a file archived
    after today's archive/ folder was removed.  None is taken for vanished."""
    tree.write_config(_to_folder(tree, "dups"), archive_layout="daily")
    daemon = start_daemon()
    dups = tree.data / "dups"

    def dropped(name: str, text: str) -> str:
        _drop(tree, name, text)
        return str(daemon.wait_event("file.archived", file=name)["to"])

    first = dropped("h.csv", "order_id\n14\n")
    day = first.split("/")[0]
    assert dropped("h1.csv", "order_id\n14\n") == f"../dups/{day}/h1.csv"
    shutil.rmtree(dups / day)  # its day emptied away
    assert dropped("h2.csv", "order_id\n14\n") == f"../dups/{day}/h2.csv"
    shutil.rmtree(dups)  # the whole folder
    assert dropped("h3.csv", "order_id\n14\n") == f"../dups/{day}/h3.csv"
    os.rename(dups, tree.data / "dups.reviewed")
    assert dropped("h4.csv", "order_id\n14\n") == f"../dups/{day}/h4.csv"
    shutil.rmtree(tree.archive / day)  # archive/ emptied of today by hand
    assert dropped("i.csv", "order_id\n15\n") == f"{day}/i.csv"
    os.rename(tree.archive / day, tree.root / "kept")  # today's archive/ moved away
    assert dropped("k.csv", "order_id\n17\n") == f"{day}/k.csv"
    assert [p.name for p in (dups / day).iterdir()] == ["h4.csv"]
    assert [p.name for p in (tree.archive / day).iterdir()] == ["k.csv"]
    assert [p.name for p in (tree.root / "kept").iterdir()] == ["i.csv"]
    assert list(tree.working.iterdir()) == [] and not daemon.find("file.vanished")
    assert _loaded(tree) == [(14,), (15,), (17,)]


def test_end_folders_held_open_are_looked_up_again(tmp_path: Path) -> None:
    """The spool's open folders of ends, removed or moved away between two uses with
    no sync between (as a refused replay leaves them): the next use opens anew."""
    data = tmp_path / "data"
    for sub in SUBDIRS:
        (data / sub).mkdir(parents=True)
    dirs = Dirs(data)
    try:
        for subdir, path, away in [
            ("../dups/2026-12-07", data / "dups" / "2026-12-07", data / "dups"),
            ("2026-12-07", data / "archive" / "2026-12-07", data / "archive" / "2026-12-07"),
        ]:
            dirs.archive_dir(subdir, create=True)
            shutil.rmtree(away)
            assert _same(dirs.archive_dir(subdir, create=True), path)
            os.rename(away, tmp_path / "reviewed")
            assert _same(dirs.archive_dir(subdir, create=True), path)
            shutil.rmtree(tmp_path / "reviewed")
    finally:
        dirs.sync()
        dirs.close()


def _same(fd: int | None, path: Path) -> bool:
    assert fd is not None
    return os.fstat(fd).st_ino == path.stat().st_ino


def test_a_reload_naming_a_folder_others_may_write_is_refused(
    tree: Tree, start_daemon: Any
) -> None:
    tree.write_config(_pipelines(tree))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    shared = tree.data / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    tree.write_config(_to_folder(tree, "shared"))
    result = run_cli("reload", "--config", str(tree.config))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{shared} is writable by its group and writable by everyone" in result.stderr
    assert ": pipelines[0].duplicates_to: " in result.stderr
    daemon.wait_event("config.rejected")


def test_a_symlink_put_where_the_folder_was_sends_the_duplicate_to_failed(
    tree: Tree, start_daemon: Any
) -> None:
    """Never followed, and the daemon goes on: the duplicate waits in failed/ with why."""
    tree.write_config(_to_folder(tree, "dups"))
    daemon = start_daemon()
    _drop(tree, "s.csv", "order_id\n18\n")
    daemon.wait_event("file.archived", file="s.csv")
    elsewhere = tree.root / "elsewhere"
    elsewhere.mkdir()
    (tree.data / "dups").symlink_to(elsewhere)
    _drop(tree, "s1.csv", "order_id\n18\n")
    failed = daemon.wait_event("file.failed", file="s1.csv")
    first = _ids(tree)["s.csv"]
    told = "dups is a symbolic link (never followed)"
    assert failed["reason"] == f"duplicate of {first}; not put in dups/: {told}"
    assert list(tree.failed_files()) == ["s1.csv"] and list(elsewhere.iterdir()) == []
    _drop(tree, "t.csv", "order_id\n19\n")  # and the daemon goes on
    daemon.wait_event("file.archived", file="t.csv")
    assert _loaded(tree) == [(18,), (19,)]


def test_prune_meets_a_symlink_put_where_the_folder_was(tree: Tree) -> None:
    tree.write_config(_to_folder(tree, "dups"))
    _drop(tree, "j.csv", "order_id\n16\n")
    _drop(tree, "j1.csv", "order_id\n16\n")
    assert run_until_idle(tree) == 0
    elsewhere = tree.root / "elsewhere"
    os.rename(tree.data / "dups", elsewhere)
    (tree.data / "dups").symlink_to(elsewhere)
    db = sqlite3.connect(tree.state_db)
    with db:
        db.execute("UPDATE items SET finished_at = finished_at - 3 * 86400")
    db.close()
    result = run_cli("prune", "--older-than", "1d", "--config", str(tree.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot open dups in the data folder" in result.stderr
    assert [p.name for p in elsewhere.iterdir()] == ["j1.csv"]  # never followed


@pytest.mark.parametrize("folder", ["working", "incoming", ".hidden", "a/b", "../etc", ""])
def test_duplicates_to_names_a_folder_of_the_data_folder(tree: Tree, folder: str) -> None:
    tree.write_config(_to_folder(tree, json.dumps(folder)))
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "duplicates_to" in result.stderr and '"archive", "failed", or the name' in result.stderr


def test_a_symlink_where_the_duplicates_folder_goes_is_refused(tree: Tree) -> None:
    target = tree.root / "elsewhere"
    target.mkdir()
    (tree.data / "dups").symlink_to(target)
    tree.write_config(_to_folder(tree, "dups"))
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = tree.config.read_text().splitlines().index("    duplicates_to: dups") + 1
    assert f"dropline.yaml:{line}:" in result.stderr and "is a symbolic link" in result.stderr
    assert "pipelines[0].duplicates_to" in result.stderr


def test_skip_on_a_pipeline_without_stages_is_refused(tree: Tree) -> None:
    """The judgement is made before the first stage: with none it would never be made,
    and every file would be archived.  The configuration says so instead."""
    tree.write_config('- name: all\n  match: "*"\n  duplicates: skip\n')
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = tree.config.read_text().splitlines().index("    duplicates: skip") + 1
    assert f"dropline.yaml:{line}: pipelines[0].duplicates: " in result.stderr
    assert "this pipeline has none; add one" in result.stderr


def test_only_something_in_its_place_sends_a_duplicate_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symbolic link where the folder (or its day folder) goes is told, for the file
    to end in failed/; a failing disk is not: it is fatal, as for any move."""
    data = tmp_path / "data"
    for sub in SUBDIRS:
        (data / sub).mkdir(parents=True)
    dirs = Dirs(data)
    ends = Ends(dirs, Settings(max_file_size=1 << 20, layout="daily"))
    try:
        (data / "dups").mkdir()
        (data / "dups" / "2026-12-07").symlink_to(tmp_path)
        told = ends.outside_problem("dups", "2026-12-07")
        assert told == "dups/2026-12-07 is a symbolic link (never followed)"
        assert ends.outside_problem("dups", "2026-12-08") == ""  # made, as the move would
        assert (data / "dups" / "2026-12-08").is_dir()
        monkeypatch.setattr(crashpoints, "_FAULT", crashpoints._Trigger("", "spool.fsync"))
        with pytest.raises(FatalIOError, match="injected fault"):
            ends.outside_problem("dups", "2026-12-09")
    finally:
        dirs.sync()
        dirs.close()
