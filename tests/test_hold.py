"""A stage's breaker: when a downstream is down, the pipeline holds (files wait, no
attempt spent on them), one file probes at growing intervals, and the first probe
that succeeds releases it.  Against real downstreams that go down and come back: the
local HTTP server of the webhook tests, the local PostgreSQL of the load tests, a
program that is missing and then installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .harness import Tree, cli_json, run_cli, run_until_idle, wait_until
from .http_recorder import Script
from .pg import PgServer


def _drop(tree: Tree, names: list[str]) -> None:
    for name in names:
        (tree.incoming / f".{name}.tmp").write_text(f"data of {name}\n")
        os.rename(tree.incoming / f".{name}.tmp", tree.incoming / name)


def _states(tree: Tree) -> dict[str, int]:
    return dict(tree.query("SELECT state, count(*) FROM items GROUP BY state"))


def _held_gauge(tree: Tree) -> str | None:
    """dropline_pipeline_held of pipeline "tell" in the metrics textfile."""
    path = tree.root / "dropline.prom"
    text = path.read_text() if path.exists() else ""
    lines = [line for line in text.splitlines() if line.startswith("dropline_pipeline_held{")]
    return lines[0].split()[-1] if lines else None


def test_a_webhook_receiver_down_holds_the_pipeline_until_it_answers(
    tree: Tree, server: tuple[str, Script], start_daemon: Any
) -> None:
    url, script = server
    script.answers = [503]
    tree.write_config(
        f"""
- name: tell
  match: "*.txt"
  stages:
    - name: hook
      builtin: webhook
      with: {{url: "{url}", attempts: 1, backoff: 10ms}}
      retries: 2
      backoff: {{initial: 50ms, max: 100ms}}
      hold_after: 3
      hold_probe: {{initial: 200ms, max: 400ms}}
""",
        metrics=f"{{textfile: {tree.root / 'dropline.prom'}, interval: 100ms}}",
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    names = [f"f{n}.txt" for n in range(10)]
    _drop(tree, names)
    held = daemon.wait_event("pipeline.held", timeout=20, pipeline="tell")
    assert held["stage"] == "hook" and "503" in held["reason"]
    # While held: probes at growing intervals, no file fails, few requests.
    daemon.wait_event("pipeline.probe_failed", timeout=20)
    wait_until(lambda: _held_gauge(tree) == "1.0", timeout=10, what="the held gauge at 1")
    status = cli_json(tree, "status", schema="status")
    assert [h["pipeline"] for h in status["held_pipelines"]] == ["tell"]
    assert _states(tree).get("failed", 0) == 0
    asked = len(script.received)
    assert asked < 10 + 3 * 3, asked
    script.answers = [200]  # the receiver is back
    daemon.wait_event("pipeline.released", timeout=20, pipeline="tell")
    wait_until(lambda: _states(tree) == {"archived": 10}, timeout=30, what="all archived")
    wait_until(lambda: _held_gauge(tree) == "0.0", timeout=10, what="the held gauge at 0")
    # No file spent more than its retries allow, and none failed.
    counted = tree.query(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM attempts "
        "WHERE outcome IN ('retrying', 'failed') GROUP BY item_id)"
    )
    assert counted[0][0] is None or counted[0][0] <= 2
    assert cli_json(tree, "status", schema="status")["held_pipelines"] == []
    daemon.stop()


def test_postgresql_stopped_and_restarted_holds_and_releases_the_load(
    tree: Tree, pg: PgServer, start_daemon: Any
) -> None:
    """The server stops: the load fails for three files, the pipeline holds; it starts
    again: a probe loads, the rest follow, every row loaded once."""
    pg.query("DROP TABLE IF EXISTS held_rows")
    pg.query("CREATE TABLE held_rows (id bigint, dropline_item text NOT NULL)")
    tree.write_config(
        f"""
- name: load
  match: "*.csv"
  stages:
    - name: pg
      builtin: postgres-load
      with: {{dsn: "{pg.dsn()}", table: held_rows, connect_timeout: 2s}}
      retries: 5
      backoff: {{initial: 50ms, max: 100ms}}
      hold_after: 3
      hold_probe: {{initial: 200ms, max: 500ms}}
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    pg.down()
    try:
        for n in range(8):
            (tree.incoming / f"r{n}.csv").write_text(f"id\n{n}\n")
        daemon.wait_event("pipeline.held", timeout=30, pipeline="load")
        daemon.wait_event("pipeline.probe_failed", timeout=30, pipeline="load")
        assert _states(tree).get("failed", 0) == 0
    finally:
        pg.up()
    daemon.wait_event("pipeline.released", timeout=30, pipeline="load")
    wait_until(lambda: _states(tree) == {"archived": 8}, timeout=30, what="all archived")
    assert sorted(r[0] for r in pg.query("SELECT id FROM held_rows")) == list(range(8))
    daemon.stop()


def test_a_program_that_cannot_start_holds_at_once(tree: Tree, start_daemon: Any) -> None:
    """exec fails (no such program): held at the first file, no file fails; installed,
    the next probe releases the pipeline."""
    program = tree.root / "bin" / "convert"
    tree.write_config(
        f"""
- name: convert
  match: "*.txt"
  stages:
    - name: run
      command: ["{program}", "{{path}}"]
      hold_probe: {{initial: 200ms, max: 400ms}}
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, [f"c{n}.txt" for n in range(5)])
    held = daemon.wait_event("pipeline.held", timeout=20, pipeline="convert")
    assert "the program cannot be started" in held["reason"]
    assert "No such file or directory" in held["reason"]
    daemon.wait_event("pipeline.probe_failed", timeout=20)
    # Not one attempt counted against a file.
    counted = "SELECT count(*) FROM attempts WHERE outcome != 'held'"
    assert tree.query(counted) == [(0,)]
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    daemon.wait_event("pipeline.released", timeout=20, pipeline="convert")
    wait_until(lambda: _states(tree) == {"archived": 5}, timeout=30, what="all archived")
    daemon.stop()


def test_a_hold_lasts_across_a_crash(tree: Tree, start_daemon: Any) -> None:
    """Killed while held (and again during a probe): the restart is still held, its
    files wait, and a probe releases it once the program is there."""
    program = tree.root / "bin" / "convert"
    tree.write_config(
        f"""
- name: convert
  match: "*.txt"
  stages:
    - name: run
      command: ["{program}"]
      hold_probe: {{initial: 300ms, max: 300ms}}
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, ["k1.txt", "k2.txt"])
    daemon.wait_event("pipeline.held", timeout=20)
    daemon.kill()
    daemon.wait()
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    assert daemon.find("pipeline.held")[0]["at"] == "start"
    daemon.wait_event("pipeline.probe_failed", timeout=20)
    # A probe that is running when the daemon is killed: a program that waits.
    program.parent.mkdir()
    started = tree.root / "started"
    program.write_text(f"#!/bin/sh\ntouch {started}\nsleep 30\n")
    program.chmod(0o755)
    wait_until(started.exists, timeout=20, what="a probe running")
    daemon.kill()
    daemon.wait()
    program.write_text("#!/bin/sh\nexit 0\n")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    daemon.wait_event("pipeline.released", timeout=20)
    wait_until(lambda: _states(tree) == {"archived": 2}, timeout=30, what="both archived")
    assert tree.query("SELECT count(*) FROM attempts WHERE outcome IN ('failed', 'retrying')") == [
        (0,)
    ]
    daemon.stop()


def test_a_hold_whose_stage_a_reload_removed_is_released(tree: Tree, start_daemon: Any) -> None:
    """Held at a stage the operator then renames (or removes) and reloads: no probe of
    that stage could ever end the hold, so the reload releases it."""
    missing = tree.root / "bin" / "missing"
    config = """
- name: convert
  match: "*.txt"
  stages:
    - name: {stage}
      command: ["{program}"]
      hold_probe: {{initial: 5m, max: 5m}}
"""
    tree.write_config(config.format(stage="run", program=missing))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, ["r1.txt"])
    daemon.wait_event("pipeline.held", timeout=20)
    tree.write_config(config.format(stage="convert", program="/bin/true"))
    done = run_cli("reload", "--config", str(tree.config))
    assert done.returncode == 0, done.stderr
    released = daemon.wait_event("pipeline.released", timeout=20)
    assert released["detail"] == "its stage is no longer configured"
    wait_until(lambda: _states(tree) == {"archived": 1}, timeout=20, what="r1 archived")
    assert tree.query("SELECT count(*) FROM holds") == [(0,)]
    daemon.stop()


def _install(program: Path) -> None:
    program.parent.mkdir(exist_ok=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)


def test_a_probe_set_aside_as_a_duplicate_does_not_stop_the_probes(
    tree: Tree, start_daemon: Any
) -> None:
    """Twins in a held pipeline that skips duplicates: the twin picked as a probe waits
    for its first instead of starting; the probes go on, the first one that can
    releases the pipeline, and the twin ends a duplicate."""
    program = tree.root / "bin" / "convert"
    tree.write_config(
        f"""
- name: orders
  match: "*.txt"
  duplicates: skip
  stages:
    - name: run
      command: ["{program}", "{{path}}"]
      hold_probe: {{initial: 100ms, max: 100ms}}
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, ["a.txt"])
    daemon.wait_event("pipeline.held", timeout=20)
    (tree.incoming / "b.txt").write_text("data of a.txt\n")  # a's twin
    wait_until(lambda: _states(tree).get("active") == 2, timeout=20, what="b claimed")
    # Probes go on past b's turns (b waits for a, it does not start).
    wait_until(lambda: len(daemon.find("pipeline.probe_failed")) >= 6, timeout=20, what="probes")
    _install(program)
    daemon.wait_event("pipeline.released", timeout=20)
    wait_until(lambda: _states(tree) == {"archived": 2}, timeout=30, what="both archived")
    assert len(daemon.find("file.duplicate")) == 1
    daemon.stop()


def test_a_file_running_its_on_failure_stages_is_never_the_probe(
    tree: Tree, start_daemon: Any
) -> None:
    up = tree.root / "up"
    check = 'case "$DROPLINE_NAME" in *bad*) exit 65;; esac; exit 0'
    tree.write_config(
        f"""
- name: p
  match: "*.txt"
  stages:
    - name: check
      command: ["sh", "-c", {json.dumps(check)}]
    - name: load
      command: ["test", "-e", "{up}"]
      retries: 3
      backoff: {{initial: 3s, max: 3s}}
      hold_after: 2
      hold_probe: {{initial: 200ms, max: 200ms}}
  on_failure:
    - name: notify
      command: ["true"]
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, ["g1.txt", "g2.txt"])
    daemon.wait_event("pipeline.held", timeout=20)
    _drop(tree, ["bad.txt"])  # fails at check, then runs notify while the pipeline holds
    daemon.wait_event("stage.succeeded", timeout=20, stage="notify")
    up.touch()
    daemon.wait_event("pipeline.released", timeout=20)
    wait_until(lambda: _states(tree) == {"archived": 2, "failed": 1}, timeout=30, what="all ended")
    daemon.stop()


def test_a_stop_is_neither_a_failure_nor_a_probe(tree: Tree, start_daemon: Any) -> None:
    """Attempts dropline stops hold nothing, and a non-idempotent probe so stopped is
    indeterminate as any (never run again), not "held"."""
    fail, runs = tree.root / "fail", tree.root / "runs.log"
    load = f'echo "$DROPLINE_ITEM_ID" >> {runs}; if [ -e {fail} ]; then exit 1; fi; sleep 30'
    tree.write_config(
        f"""
- name: p
  match: "*.txt"
  stages:
    - name: load
      command: ["sh", "-c", {json.dumps(load)}]
      idempotent: false
      retries: 3
      hold_after: 1
      hold_probe: {{initial: 200ms, max: 200ms}}
- name: slow
  match: "*.slow"
  stages:
    - name: wait
      command: ["sleep", "30"]
      hold_after: 2
""",
        stop_timeout="500ms",
    )
    fail.touch()
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, ["f.txt", "s1.slow", "s2.slow", "s3.slow"])
    daemon.wait_event("pipeline.held", timeout=20, pipeline="p")
    fail.unlink()
    wait_until(lambda: len(runs.read_text().split()) >= 2, timeout=20, what="the probe running")
    wait_until(lambda: len(daemon.find("stage.started", stage="wait")) >= 3, 20, what="slow")
    daemon.stop()
    last = tree.query("SELECT outcome FROM attempts WHERE stage = 'load' ORDER BY id DESC")
    assert last[0] == ("indeterminate",)
    assert tree.query("SELECT pipeline FROM holds") == [("p",)]  # slow: stopped, not held


def test_exit_when_idle_ends_with_only_a_held_pipelines_files_left(tree: Tree) -> None:
    """Once its probes have backed off all the way (down for a while, not a blip)."""
    tree.write_config(
        f"""
- name: convert
  match: "*.txt"
  stages:
    - name: run
      command: ["{tree.root / "bin" / "missing"}"]
      hold_probe: {{initial: 100ms, max: 200ms}}
- name: plain
  match: "*.dat"
"""
    )
    _drop(tree, ["h.txt", "d.dat"])
    assert run_until_idle(tree, timeout=30) == 0
    assert sorted(tree.archived()) == ["d.dat"]
    assert _states(tree) == {"active": 1, "archived": 1}
    assert tree.query("SELECT pipeline FROM holds") == [("convert",)]
