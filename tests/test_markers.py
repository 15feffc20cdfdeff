"""``ready_marker: "{name}.done"``: a file is claimed only once its marker is beside it
(and not older than it), the marker goes with it, a marker is never a file, a marker
without its file is told after a while; across a crash between the claim and the
marker's removal nothing is lost or run twice.
"""

from __future__ import annotations

import os
from typing import Any

from .harness import Tree, cli_json, crash_run, run_cli, run_until_idle, wait_until

PIPELINES = """
- name: orders
  match: "*.csv"
  ready_marker: "{name}.done"
  stages:
    - name: count
      command: ["sh", "-c", "echo $DROPLINE_ITEM_ID >> RUNS"]
- name: everything
  match: "*"
"""


def _config(tree: Tree, **settings: Any) -> None:
    tree.write_config(PIPELINES.replace("RUNS", str(tree.root / "runs.log")), **settings)


def _runs(tree: Tree) -> list[str]:
    path = tree.root / "runs.log"
    return path.read_text().split() if path.exists() else []


def test_a_file_waits_for_its_marker_which_goes_with_it(tree: Tree, start_daemon: Any) -> None:
    _config(tree)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "a.csv").write_text("id\n1\n")
    (tree.incoming / "other.txt").write_text("x\n")  # another pipeline: goes on
    wait_until(lambda: "other.txt" in tree.archived(), timeout=20, what="other.txt archived")
    assert (tree.incoming / "a.csv").exists() and not daemon.find("file.claimed", file="a.csv")
    (tree.incoming / "a.csv.done").touch()
    wait_until(lambda: "a.csv" in tree.archived(), timeout=20, what="a.csv archived")
    wait_until(lambda: not (tree.incoming / "a.csv.done").exists(), 10, what="marker gone")
    # The marker was never a file of its own (the "*" pipeline would have taken it).
    assert "a.csv.done" not in tree.archived()
    assert len(_runs(tree)) == 1
    daemon.stop()


def test_a_marker_older_than_its_file_does_not_count(tree: Tree) -> None:
    """A marker left from an earlier file of the same name: the new file waits for a
    marker of its own (by change time, which no writer can set back)."""
    _config(tree)
    (tree.incoming / "b.csv.done").touch()
    os.utime(tree.incoming / "b.csv.done", (1, 1))  # (mtime set back: ctime still counts)
    (tree.incoming / "b.csv").write_text("id\n2\n")
    assert run_until_idle(tree) == 0
    assert "b.csv" not in tree.archived() and (tree.incoming / "b.csv").exists()
    (tree.incoming / "b.csv.done").unlink()
    (tree.incoming / "b.csv.done").touch()
    assert run_until_idle(tree) == 0
    assert "b.csv" in tree.archived() and not (tree.incoming / "b.csv.done").exists()


def test_a_marker_without_its_file_is_told_after_a_while(tree: Tree, start_daemon: Any) -> None:
    _config(tree, tool_files="{held_warning: 300ms}", rescan_interval="200ms")
    (tree.incoming / "lonely.csv.done").touch()
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    told = daemon.wait_event("marker.orphaned", timeout=20)
    assert told["file"] == "lonely.csv.done" and told["waits_for"] == "lonely.csv"
    assert (tree.incoming / "lonely.csv.done").exists()  # reported, not taken
    assert len(daemon.find("marker.orphaned")) == 1
    daemon.stop()


def test_a_crash_between_the_claim_and_the_markers_removal(tree: Tree) -> None:
    _config(tree)
    (tree.incoming / "c.csv").write_text("id\n3\n")
    (tree.incoming / "c.csv.done").touch()
    crash_run(tree, "claim.marker")
    assert run_until_idle(tree) == 0
    assert "c.csv" in tree.archived() and len(_runs(tree)) == 1
    # The marker stayed (its file had been claimed): no newer c.csv counts it.
    assert (tree.incoming / "c.csv.done").exists()
    (tree.incoming / "c.csv").write_text("id\n4\n")
    assert run_until_idle(tree) == 0
    assert (tree.incoming / "c.csv").exists() and len(_runs(tree)) == 1


def test_try_tells_the_marker_a_file_would_wait_for(tree: Tree) -> None:
    _config(tree)
    sample = tree.root / "d.csv"
    sample.write_text("id\n5\n")
    doc = cli_json(tree, "try", str(sample), schema="try")
    assert doc["marker"] == "d.csv.done"
    text = run_cli("try", str(sample), "--config", str(tree.config)).stdout
    assert "Marker: in incoming/ the file waits for d.csv.done beside it" in text


def test_a_marker_template_must_name_the_file(tree: Tree) -> None:
    tree.write_config(PIPELINES.replace('"{name}.done"', '"done"'))
    done = run_cli("check", "--config", str(tree.config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert 'pipelines[0].ready_marker: expected a file name with "{name}" in it once' in done.stderr
