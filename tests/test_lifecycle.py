"""The life of a file through a real daemon: claim, stages, archive or failed."""

from __future__ import annotations

import json
import os
from typing import Any

from .harness import Tree, run_cli, run_until_idle, wait_until

PASSTHROUGH = """
- name: passthrough
  match: "*.txt"
"""


def test_files_present_before_start_are_processed(tree: Tree) -> None:
    """A backlog dropped while the daemon was down is archived byte-identical after start."""
    tree.write_config(PASSTHROUGH)
    payloads = {f"f{i}.txt": os.urandom(100 + i) for i in range(1000)}
    for name, data in payloads.items():
        (tree.incoming / name).write_bytes(data)
    assert run_until_idle(tree) == 0
    archived = tree.archived()
    assert set(archived) == set(payloads)
    for name, data in payloads.items():
        assert archived[name].read_bytes() == data
    assert not list(tree.incoming.iterdir())
    assert not list(tree.working.iterdir())
    rows = tree.query("SELECT state, count(*) FROM items GROUP BY state")
    assert rows == [("archived", 1000)]


def test_live_file_archived_and_logged(tree: Tree, start_daemon: Any) -> None:
    """A file written in place while the daemon runs is claimed on close and archived."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "live.txt").write_bytes(b"hello\n")
    wait_until(lambda: "live.txt" in tree.archived(), what="live.txt archived")
    claimed = daemon.wait_event("file.claimed", file="live.txt")
    archived = daemon.wait_event("file.archived", file="live.txt")
    assert claimed["item"] == archived["item"]
    assert claimed["pipeline"] == "passthrough"
    assert daemon.stop() == 0
    daemon.wait_event("daemon.stopped")


def test_unmatched_file_fails_with_reason(tree: Tree) -> None:
    """A file no pipeline matches goes to failed/ with its reason in NAME.error.json."""
    tree.write_config(PASSTHROUGH)
    (tree.incoming / "data.bin").write_bytes(b"\x00\x01")
    assert run_until_idle(tree) == 0
    assert (tree.failed / "data.bin").read_bytes() == b"\x00\x01"
    doc = json.loads((tree.failed / "data.bin.error.json").read_text())
    assert doc["error"] == "no pipeline matches this name"
    assert doc["pipeline"] is None
    assert len(doc["item_id"]) == 26


def test_taken_name_gets_unique_suffix(tree: Tree) -> None:
    """A second file of the same name never overwrites the first in archive/."""
    tree.write_config(PASSTHROUGH)
    (tree.archive / "same.txt").write_bytes(b"first")
    (tree.incoming / "same.txt").write_bytes(b"second")
    assert run_until_idle(tree) == 0
    assert (tree.archive / "same.txt").read_bytes() == b"first"
    others = [p for p in tree.archive.iterdir() if p.name != "same.txt"]
    assert len(others) == 1
    assert others[0].read_bytes() == b"second"
    assert others[0].name.startswith("same.") and others[0].name.endswith(".txt")


def test_daily_layout_uses_date_folders(tree: Tree) -> None:
    """With archive_layout daily, files end in archive/YYYY-MM-DD/NAME."""
    tree.write_config(PASSTHROUGH, archive_layout="daily")
    (tree.incoming / "a.txt").write_bytes(b"a")
    assert run_until_idle(tree) == 0
    (day,) = list(tree.archive.iterdir())
    assert len(day.name) == 10 and day.name[4] == "-"
    assert (day / "a.txt").read_bytes() == b"a"


def test_temporary_and_hidden_names_are_never_claimed(tree: Tree) -> None:
    """Names matching the ignore globs stay in incoming/."""
    tree.write_config(PASSTHROUGH + '- name: all\n  match: "*"\n')
    for name in (".hidden", "x.tmp", "y.part", "z.partial", "w~", "ok.txt"):
        (tree.incoming / name).write_bytes(b"data")
    assert run_until_idle(tree) == 0
    assert sorted(p.name for p in tree.incoming.iterdir()) == sorted(
        [".hidden", "x.tmp", "y.part", "z.partial", "w~"]
    )
    assert set(tree.archived()) == {"ok.txt"}


def test_check_accepts_a_good_configuration(tree: Tree) -> None:
    """dropline check exits 0 on a valid configuration and host."""
    tree.write_config(PASSTHROUGH)
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_second_daemon_on_same_state_is_refused(tree: Tree, start_daemon: Any) -> None:
    """The flock on the state directory stops a second daemon."""
    tree.write_config(PASSTHROUGH)
    first = start_daemon()
    first.wait_event("daemon.ready")
    second = run_cli("run", "--config", str(tree.config))
    assert second.returncode == 1
    assert "another dropline is running" in second.stderr
    assert first.proc.poll() is None


def test_entry_stranded_in_working_does_not_block_its_name(tree: Tree) -> None:
    """A non-file left in working/ (never adopted) keeps its name; a new file of that name
    is claimed under a suffixed working name and archived."""
    tree.write_config(PASSTHROUGH)
    os.symlink("/etc/hostname", tree.working / "same.txt")
    (tree.incoming / "same.txt").write_bytes(b"new")
    assert run_until_idle(tree) == 0
    assert tree.archived()["same.txt"].read_bytes() == b"new"
    assert (tree.working / "same.txt").is_symlink()


SAYING_STAGE = """
def say(ctx):
    ctx.log.info("stage.says", words="hello")
"""


def test_log_keeps_the_order_of_a_thread_stage(tree: Tree, start_daemon: Any) -> None:
    """A stage's own lines (here from a worker thread) come after its stage.started
    and before its stage.succeeded: the loop holds lines per pass, theirs with them."""
    folder = tree.root / "pipelines"
    folder.mkdir()
    (folder / "saying.py").write_text(SAYING_STAGE)
    tree.write_config(
        """
- name: talk
  match: "*.txt"
  stages:
    - name: say
      python: "saying:say"
      isolation: thread
""",
        pipelines_dir=str(folder),
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    for i in range(20):
        (tree.incoming / f"t{i}.txt").write_bytes(b"hi\n")
    wait_until(lambda: len(tree.archived()) == 20, timeout=20, what="20 files archived")
    daemon.wait_event("file.archived", file="t19.txt")
    assert daemon.stop() == 0
    events = daemon.events()
    for i in range(20):
        mine = [e["event"] for e in events if e.get("file") == f"t{i}.txt"]
        order = [e for e in mine if e in ("stage.started", "stage.says", "stage.succeeded")]
        assert order == ["stage.started", "stage.says", "stage.succeeded"], (i, mine)
