"""``dropline top``: per pipeline and stage, what runs, waits and retries and how
fast files go, from a real daemon's state; live in a real terminal (tmux)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropline.commands import top
from dropline.config import load_config
from dropline.state import StateReader

from .harness import REPO, Tree, cli_json, run_cli, wait_until
from .loop.stepper import stepped
from .test_stages import pipeline_yaml, sh_stage

TMUX = shutil.which("tmux")
QUICK = """
- name: quick
  match: "*.txt"
  stages: []
"""


def _drop(tree: Tree, count: int, suffix: str) -> None:
    for n in range(count):
        tmp = tree.incoming / f".t{n:03d}{suffix}.tmp"
        tmp.write_bytes(b"x\n")
        os.rename(tmp, tree.incoming / f"t{n:03d}{suffix}")


def _configure(tree: Tree, gates: Path) -> None:
    gated = sh_stage("wait", 'while [ ! -e "$1" ]; do sleep 0.02; done', str(gates / "open"))
    flaky = sh_stage("flaky", "exit 1", retries=2, backoff={"initial": "1h", "max": "1h"})
    tree.write_config(
        pipeline_yaml([gated], name="slow", match="*.dat")
        + "  concurrency: 2\n"
        + pipeline_yaml([flaky], name="flaky", match="*.bad")
        + QUICK,
        workers=3,
    )


def test_a_frame_counts_each_stage_and_the_rates(tree: Tree, tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    _configure(tree, gates)
    with stepped(tree) as s:
        _drop(tree, 5, ".txt")
        _drop(tree, 6, ".dat")
        _drop(tree, 1, ".bad")
        try:
            s.until(lambda: bool(s.find("stage.retrying")) and len(s.daemon.scheduler.running) == 2)
            s.until(lambda: len(s.find("file.archived")) == 5)
            # The frame at a moment of the test's choosing: the rates' window is
            # then known, however slow the machine was to get here.
            now = time.time()
            with StateReader(tree.state_db) as reader:
                doc = top.collect(load_config(tree.config), reader, now)
            cli_json(tree, "top", schema="top")
            human = run_cli("top", "--config", str(tree.config)).stdout
        finally:
            (gates / "open").touch()
        s.until(lambda: len(s.find("file.archived")) == 11, timeout=30)
    since = now - top.RATE_WINDOW
    started = dict(
        tree.query(
            "SELECT stage, count(*) FROM attempts WHERE started_at BETWEEN ? AND ? GROUP BY stage",
            (since, now),
        )
    )
    (quick_ended,) = tree.query(
        "SELECT count(*) FROM items WHERE pipeline = 'quick' AND finished_at BETWEEN ? AND ?",
        (since, now),
    )[0]
    by_name = {p["pipeline"]: p for p in doc["pipelines"]}
    assert list(by_name) == ["slow", "flaky", "quick"]  # the configuration's order
    slow = {st["stage"]: st for st in by_name["slow"]["stages"]}["wait"]
    assert (slow["running"], slow["waiting"], slow["retrying"]) == (2, 4, 0)
    assert slow["started_per_second"] == pytest.approx(started.get("wait", 0) / 10)
    flaky = {st["stage"]: st for st in by_name["flaky"]["stages"]}["flaky"]
    assert (flaky["running"], flaky["retrying"]) == (0, 1)
    assert by_name["quick"]["archived"] == quick_ended
    assert by_name["quick"]["ended_per_second"] == pytest.approx(quick_ended / 10)
    assert doc["incoming"] == {"count": 0, "more": False}
    lines = human.splitlines()
    assert lines[0].startswith("dropline ") and "rates over the last 10 s" in lines[0]
    row = next(line.split() for line in lines if line.split()[:1] == ["wait"])
    assert row[2:5] == ["2", "4", "0"], human


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_live_in_a_terminal_until_ctrl_c(tree: Tree, tmp_path: Path) -> None:
    """In a real terminal it redraws every interval on the alternate screen, and Ctrl-C
    ends it with status 0, the screen given back."""
    assert TMUX is not None
    tree.write_config(QUICK)
    _drop(tree, 3, ".txt")
    assert run_cli("run", "--exit-when-idle", "--config", str(tree.config)).returncode == 0
    session = f"dropline-top-{os.getpid()}"
    status = tmp_path / "status"
    # The shell keeps running through Ctrl-C (a handler, which its child does not
    # inherit) to write top's exit status.
    command = (
        "trap true INT; "
        f"PYTHONPATH={shlex.quote(str(REPO / 'daemon'))} {shlex.quote(sys.executable)} "
        f"-m dropline top --interval 0.2 --config {shlex.quote(str(tree.config))}; "
        f"echo $? > {shlex.quote(str(status))}; sleep 30"
    )
    tmux = [TMUX, "-L", session]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "30", "bash", "-c", command],
        check=True,
    )
    try:

        def screen() -> str:
            done = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            )
            return done.stdout

        def frame() -> str | None:
            shown = screen()
            return shown if "FAILED 1H" in shown else None

        first = wait_until(frame, 20, what="a frame of top")
        assert "quick" in first and "(Ctrl-C to quit)" in first
        stamp = first.splitlines()[0]
        wait_until(lambda: screen().splitlines()[0] != stamp, 10, what="the next frame")
        subprocess.run([*tmux, "send-keys", "-t", session, "C-c"], check=True)
        wait_until(status.exists, 10, what="top to end")
        assert status.read_text().strip() == "0"
        assert "FAILED 1H" not in screen(), "the alternate screen is left"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
