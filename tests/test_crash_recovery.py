"""Crash injection: the daemon kills itself at step k of the protocol, for every k.

After each crash a restart must leave every file in exactly one final place,
byte-identical, with the database intact; and recovery run twice changes
nothing the second time.  The crash points are the ones the daemon declares
(``dropline.crashpoints.POINTS``), so a new step cannot be left untested.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
from typing import Any

import pytest

from dropline.config import load_config
from dropline.crashpoints import POINTS
from dropline.lifecycle.recovery import recover
from dropline.log import get_logger
from dropline.pipeline import Routes
from dropline.spool import Spool
from dropline.state import Database, ItemLog

from .harness import Tree, crash_run, run_until_idle
from .rewrites import delay_env, rewrite_during_claim

PIPELINES = """
- name: good
  match: "*.good"
  stages:
    - name: checksum
      builtin: sha256
    - name: touch
      command: ["true"]
- name: bad
  match: "*.bad"
  stages:
    - name: reject
      command: ["sh", "-c", "exit 65"]
- name: plain
  match: "*.txt"
"""


def _drop_files(tree: Tree) -> dict[str, bytes]:
    files = {f"f{i}.good": os.urandom(2000 + i) for i in range(4)}
    files |= {f"g{i}.bad": os.urandom(500 + i) for i in range(2)}
    files |= {f"h{i}.txt": os.urandom(100 + i) for i in range(3)}
    files["unrouted.bin"] = b"nobody wants me"
    for name, data in files.items():
        (tree.incoming / name).write_bytes(data)
    return files


def _snapshot(tree: Tree) -> tuple[list[tuple[str, str]], list[str]]:
    files = sorted(
        (str(p.relative_to(tree.data)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in tree.data.rglob("*")
        if p.is_file() or p.is_symlink()
    )
    db = sqlite3.connect(tree.state_db)
    try:
        dump = list(db.iterdump())
    finally:
        db.close()
    return files, dump


def _recover_in_process(tree: Tree) -> None:
    config = load_config(tree.config)
    db = Database(config.state_db)
    spool = Spool(config.data_dir, max_file_size=config.max_file_size, layout="flat")
    try:
        recover(ItemLog(db), spool, Routes(config), 1_000_000_000.0, get_logger())
    finally:
        spool.close()
        db.close()


def _assert_all_final(tree: Tree, files: dict[str, bytes]) -> None:
    final = tree.all_final()
    names = sorted(p.name for p in final)
    assert names == sorted(files), "every file exactly once in archive/ or failed/"
    for path in final:
        assert path.read_bytes() == files[path.name], f"{path} differs from what was dropped"
    for name in files:
        in_failed = (tree.failed / name).exists()
        expect_failed = name.endswith(".bad") or name == "unrouted.bin"
        assert in_failed == expect_failed, name
        if in_failed:
            assert (tree.failed / f"{name}.error.json").exists()
    assert not list(tree.incoming.iterdir())
    assert not list(tree.working.iterdir())
    assert tree.query("PRAGMA integrity_check") == [("ok",)]
    states = dict(tree.query("SELECT state, count(*) FROM items GROUP BY state"))
    assert states == {"archived": 7, "failed": 3}


# Reached only when archive/ or failed/ is on another filesystem: test_filesystems.py.
ACROSS_FILESYSTEMS = {"finish.copied", "finish.copy_renamed"}
# Reached only by `dropline retry` (test_retry.py) and `dropline replay` (test_replay.py).
RETRY = {
    "retry.intent_committed",
    "retry.moved",
    "retry.synced",
    "replay.intent_committed",
    "replay.copied",
    "replay.synced",
}
# Reached only when a file is rewritten while it is claimed: the test below.
REWRITTEN = {"claim.put_back", "claim.held"}
# Reached only with a ready_marker: test_markers.py.
MARKER = {"claim.marker"}

# Each case: the crash points armed in successive runs before the clean one.
CASES: list[tuple[str, ...]] = [
    (point,)
    for point in POINTS
    if not point.startswith("recovery")
    and point not in ACROSS_FILESYSTEMS | RETRY | REWRITTEN | MARKER
]
CASES += [
    ("claim.renamed#3",),
    ("finish.renamed#2",),
    ("claim.renamed", "recovery.repaired"),  # a crash inside recovery itself
    ("finish.intent_committed", "finish.renamed"),  # recovery's finish interrupted
    ("finish.error_written", "finish.error_written"),
]


@pytest.mark.parametrize("points", CASES, ids=["+".join(c) for c in CASES])
def test_crash_at_each_step_loses_nothing(tree: Tree, points: tuple[str, ...]) -> None:
    """Kill at the given step(s), restart, and every file ends once, intact."""
    tree.write_config(PIPELINES)
    files = _drop_files(tree)
    for point in points:
        crash_run(tree, point)
    first = _snapshot(tree)
    _recover_in_process(tree)
    once = _snapshot(tree)
    _recover_in_process(tree)
    assert _snapshot(tree) == once, "recovery run twice changed something the second time"
    assert first[0] is not None
    assert run_until_idle(tree) == 0
    _assert_all_final(tree, files)


def test_crash_points_cover_the_protocol() -> None:
    """Every declared crash point is reached by some test case (here, across filesystems
    or in the retry and replay tests)."""
    armed = {p.split("#")[0] for case in CASES for p in case}
    assert armed | ACROSS_FILESYSTEMS | RETRY | REWRITTEN | MARKER == set(POINTS)
    assert {point for point, _ in REWRITE_CASES} == REWRITTEN


# (crash point, whether the writer makes a new file of the name during the claim)
REWRITE_CASES = [
    ("claim.put_back", False),  # back in incoming/, not yet synced; the row says "claiming"
    ("claim.held", True),  # kept in working/ (its name taken again), the row "claiming"
]


@pytest.mark.parametrize("point, again", REWRITE_CASES, ids=[p for p, _ in REWRITE_CASES])
def test_crash_in_a_claim_that_cannot_complete(
    tree: Tree, start_daemon: Any, point: str, again: bool
) -> None:
    """A file rewritten while it is claimed (the race window held open), the daemon
    killed as it puts the file back or keeps it: after the restart every version
    ends once, intact, and recovery run twice changes nothing the second time."""
    tree.write_config(PIPELINES)
    daemon = start_daemon(env=delay_env(tree, {"DROPLINE_CRASH_AT": point}))
    wrote = rewrite_during_claim(tree, daemon, "loop.txt", again=again)
    assert daemon.wait(30) == -signal.SIGKILL, f"{point} was never reached:\n{daemon.text()}"
    _recover_in_process(tree)
    once = _snapshot(tree)
    _recover_in_process(tree)
    assert _snapshot(tree) == once, "recovery run twice changed something the second time"
    assert run_until_idle(tree) == 0
    expected = sorted(v for v in (wrote.first, wrote.second) if v is not None)
    final = tree.all_final()
    assert sorted(p.read_bytes() for p in final) == expected
    assert all(p.parent == tree.archive for p in final)
    assert not list(tree.incoming.iterdir())
    assert not list(tree.working.iterdir())
    assert tree.query("PRAGMA integrity_check") == [("ok",)]
    rows = tree.query("SELECT state, sha256 FROM items")
    assert sorted(h for _, h in rows) == sorted(hashlib.sha256(v).hexdigest() for v in expected)
    assert {s for s, _ in rows} == {"archived"}


def test_recovery_is_idempotent_on_a_clean_state(tree: Tree) -> None:
    """With nothing to repair, recovery changes nothing at all."""
    tree.write_config(PIPELINES)
    files = _drop_files(tree)
    assert run_until_idle(tree) == 0
    before = _snapshot(tree)
    _recover_in_process(tree)
    assert _snapshot(tree) == before
    _assert_all_final(tree, files)
