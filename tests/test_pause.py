"""``dropline pause`` and ``resume``: a paused pipeline's files wait (in incoming/, or
in working/ with no stage started and no attempt spent) while the others go on; the
pause lasts across restarts and shows in status, top and try.

Real daemons; a stage that waits for a marker file holds a file in mid-pipeline, and
the files of another pipeline, archived after it, show the loop went on meanwhile.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from .harness import StatusListener, Tree, cli_json, run_cli, run_until_idle, wait_until


def _pipelines(tree: Tree) -> str:
    marker, runs = tree.root / "go", tree.root / "runs.log"
    wait = f'while [ ! -e {marker} ]; do sleep 0.05; done; echo "$DROPLINE_ITEM_ID first" >> {runs}'
    second = f'echo "$DROPLINE_ITEM_ID second" >> {runs}'
    return f"""
- name: slow
  match: "*.slow"
  stages:
    - name: first
      command: ["sh", "-c", {json.dumps(wait)}]
    - name: second
      command: ["sh", "-c", {json.dumps(second)}]
- name: other
  match: "*.txt"
"""


def _drop(tree: Tree, name: str) -> None:
    (tree.incoming / f".{name}.tmp").write_text(f"data of {name}\n")
    os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)


def _archived(tree: Tree, name: str) -> None:
    wait_until(lambda: name in tree.archived(), timeout=20, what=f"{name} archived")


def _runs(tree: Tree) -> list[str]:
    path = tree.root / "runs.log"
    return [line.split()[1] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_paused_pipeline_waits_and_the_others_go_on(tree: Tree, start_daemon: Any) -> None:
    tree.write_config(_pipelines(tree))
    (tree.root / "go").touch()
    status_line = StatusListener(tree.root / "notify.sock")
    daemon = start_daemon(env={"NOTIFY_SOCKET": status_line.path})
    daemon.wait_event("daemon.ready")
    doc = cli_json(tree, "pause", "slow", "--reason", "db maintenance", schema="pause")
    assert doc == {"pipeline": "slow", "applied_by": "daemon", "result": "paused", "paused": True}
    assert daemon.wait_event("pipeline.paused", pipeline="slow")["reason"] == "db maintenance"
    _drop(tree, "a.slow")
    _drop(tree, "b.txt")
    _archived(tree, "b.txt")  # looked at in the same pass as a.slow, which waits
    assert (tree.incoming / "a.slow").exists()
    assert tree.query("SELECT count(*) FROM items WHERE pipeline = 'slow'") == [(0,)]
    # Shown where an operator looks.
    status = cli_json(tree, "status", schema="status")
    assert [(p["pipeline"], p["reason"]) for p in status["paused"]] == [("slow", "db maintenance")]
    text = run_cli("status", "--config", str(tree.config)).stdout
    assert 'Paused:     pipeline "slow" since ' in text and ": db maintenance" in text
    wait_until(lambda: status_line.saw("STATUS=paused: slow; "), 10, what="the status line")
    status_line.close()
    top = cli_json(tree, "top", "--once", schema="top")
    assert {p["pipeline"]: p["paused"] for p in top["pipelines"]} == {
        "slow": True,
        "other": False,
    }
    again = cli_json(tree, "pause", "slow", schema="pause")
    assert again["result"] == "already paused"
    assert len(daemon.find("pipeline.paused")) == 1  # logged once per change
    # Across a restart: still paused.
    daemon.stop()
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, "c.txt")
    _archived(tree, "c.txt")
    assert (tree.incoming / "a.slow").exists()
    done = cli_json(tree, "resume", "slow", schema="pause")
    assert (done["result"], done["paused"]) == ("resumed", False)
    _archived(tree, "a.slow")
    daemon.wait_event("pipeline.resumed", pipeline="slow")
    assert cli_json(tree, "status", schema="status")["paused"] == []
    daemon.stop()


def test_a_file_in_mid_pipeline_waits_without_spending_an_attempt(
    tree: Tree, start_daemon: Any
) -> None:
    tree.write_config(_pipelines(tree))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, "m.slow")
    daemon.wait_event("stage.started", stage="first")
    assert cli_json(tree, "pause", "slow", schema="pause")["result"] == "paused"
    (tree.root / "go").touch()  # the stage running ends as it would
    daemon.wait_event("stage.succeeded", stage="first")
    _drop(tree, "n.txt")
    _archived(tree, "n.txt")  # passes went by: the next stage did not start
    assert not daemon.find("stage.started", stage="second")
    assert sorted(p.name for p in tree.working.iterdir()) == ["m.slow"]
    cli_json(tree, "resume", "slow", schema="pause")
    _archived(tree, "m.slow")
    assert _runs(tree) == ["first", "second"]
    outcomes = tree.query("SELECT stage, outcome FROM attempts ORDER BY id")
    assert outcomes == [("first", "succeeded"), ("second", "succeeded")]
    daemon.stop()


def test_files_handed_to_workers_ahead_wait_too(tree: Tree, start_daemon: Any) -> None:
    """Stages handed to the workers ahead of time and not begun when the pause comes
    do not begin: their attempts end "held" (not counted) at once, while the two
    begun still run, and they run after the resume."""
    tree.write_config(_pipelines(tree), workers=2)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    for n in range(8):
        _drop(tree, f"h{n}.slow")
    # Two begin (one a worker), the rest are handed ahead: started, not begun.
    wait_until(lambda: len(daemon.find("stage.started", stage="first")) >= 4, 20, what="starts")
    assert cli_json(tree, "pause", "slow", schema="pause")["result"] == "paused"

    def all_but_two_held() -> bool:  # (more may have been handed out until the pause)
        return len(daemon.find("stage.held")) + 2 == len(daemon.find("stage.started"))

    wait_until(all_but_two_held, 20, what="held back")
    handed = len(daemon.find("stage.started", stage="first"))
    assert _runs(tree) == []  # the two begun wait for "go" still
    (tree.root / "go").touch()
    wait_until(lambda: len(daemon.find("stage.succeeded")) >= 2, 20, what="the two begun")
    _drop(tree, "p.txt")
    _archived(tree, "p.txt")  # passes went by
    assert _runs(tree).count("first") == 2 and "second" not in _runs(tree)
    held = tree.query("SELECT count(*) FROM attempts WHERE outcome = 'held'")
    assert held == [(handed - 2,)]
    cli_json(tree, "resume", "slow", schema="pause")
    for n in range(8):
        _archived(tree, f"h{n}.slow")
    assert _runs(tree).count("first") == 8 and _runs(tree).count("second") == 8
    counted = tree.query("SELECT max(attempt) FROM attempts WHERE outcome != 'held'")
    assert counted == [(1,)]  # none spent an attempt waiting
    daemon.stop()


def test_a_pause_asked_of_a_daemon_that_stopped_applies_before_any_stage(
    tree: Tree, start_daemon: Any
) -> None:
    """`dropline pause` left its request for the running daemon, which stopped before
    serving it: the next start applies it before it starts any stage."""
    tree.write_config(_pipelines(tree))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    for n in range(3):
        _drop(tree, f"q{n}.slow")
    daemon.wait_event("stage.started", stage="first")
    daemon.kill()  # its files stay in working/, to be resumed by the next start
    (tree.root / "go").touch()  # (its stage commands, left running, end too)
    with sqlite3.connect(tree.state_db) as db:  # as the command leaves it
        db.execute(
            "INSERT INTO requests (kind, item_id, requested_at, detail) "
            "VALUES ('pause', 'slow', strftime('%s', 'now'), 'left for the daemon')"
        )
    db.close()
    daemon = start_daemon()
    daemon.wait_event("pipeline.paused", pipeline="slow")
    _drop(tree, "r.txt")
    _archived(tree, "r.txt")  # passes went by
    assert not daemon.find("stage.started", pipeline="slow")
    assert len(list(tree.working.iterdir())) == 3
    answers = tree.query("SELECT result FROM requests WHERE kind = 'pause'")
    assert answers == [("paused",)]
    daemon.stop()


def test_pause_without_a_daemon_holds_when_it_starts(tree: Tree) -> None:
    """Written to the state by the command itself; the daemon reads it at start, and
    --exit-when-idle ends with the paused pipeline's files still waiting."""
    tree.write_config(_pipelines(tree))
    (tree.root / "go").touch()
    doc = cli_json(tree, "pause", "slow", schema="pause")
    assert (doc["applied_by"], doc["result"]) == ("offline", "paused")
    _drop(tree, "x.slow")
    _drop(tree, "y.txt")
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["y.txt"]
    assert (tree.incoming / "x.slow").exists()
    # try says so, and what would happen once resumed.
    sample = tree.root / "z.slow"
    sample.write_text("z\n")
    tried = cli_json(tree, "try", str(sample), schema="try")
    assert tried["paused"] is True and tried["outcome"] == "archived"
    text = run_cli("try", str(sample), "--config", str(tree.config)).stdout
    assert 'Paused: pipeline "slow" is paused; the file would wait in incoming/' in text
    assert cli_json(tree, "resume", "slow", schema="pause")["result"] == "resumed"
    assert run_until_idle(tree) == 0
    assert sorted(tree.archived()) == ["x.slow", "y.txt"]


def test_an_unknown_pipeline_is_a_usage_error(tree: Tree) -> None:
    tree.write_config(_pipelines(tree))
    done = run_cli("pause", "slwo", "--config", str(tree.config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert 'no pipeline "slwo" (pipelines: slow, other)' in done.stderr
    assert not tree.state_db.exists()
