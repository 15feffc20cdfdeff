"""A stage handed to a worker and handed back unbegun because its pipeline was paused
(``WorkerPool.withhold``): recorded "held", never taken for one that ran, a stop
meanwhile included (a stage declared idempotent: false would fail as indeterminate)."""

from __future__ import annotations

import os

from ..harness import Tree, wait_until
from .stepper import stepped

ONCE = """
- name: p
  match: "*.csv"
  stages:
    - name: once
      command: ["true"]
      idempotent: false
"""


def test_a_stage_handed_back_unbegun_waits_through_a_stop(tree: Tree) -> None:
    tree.write_config(ONCE, workers=1)
    with stepped(tree) as s:
        # As a pause served just after the dispatch leaves it: the pool withholds the
        # pipeline's jobs, the job it was handed comes back unbegun.
        s.daemon.scheduler.attempts.pool.withhold(frozenset({"p"}))
        (tree.incoming / ".a.tmp").write_text("x\n")
        os.rename(tree.incoming / ".a.tmp", tree.incoming / "a.csv")
        s.until(lambda: bool(s.find("stage.started")))
        wait_until(lambda: not s.flags.inbox.empty(), what="the job handed back")
        s.flags.request_stop()
        s.until(s.step)
    assert not s.find("file.failed") and not s.find("stage.failed")
    assert tree.query("SELECT outcome, error, seconds FROM attempts") == [
        ("held", "not begun: its pipeline is paused", None)
    ]
    assert [p.name for p in tree.working.iterdir()] == ["a.csv"]  # runs after the restart
