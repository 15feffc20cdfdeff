"""``dropline status``: counts, backlog, files in flight, rate and failures, from a real daemon."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from dropline.commands import status
from dropline.config import load_config

from .harness import Tree, cli_json, make_tree, run_cli, run_until_idle, wait_until
from .loop.stepper import stepped
from .test_stages import pipeline_yaml, sh_stage

SLOW = """
- name: slow
  match: "*.dat"
  stages:
    - name: wait-a-bit
      command: ["sleep", "0.05"]
- name: bad
  match: "*.bad"
  stages:
    - name: reject
      command: ["sh", "-c", "echo 'line 3 is wrong' >&2; exit 65"]
"""


def _drop(tree: Tree, count: int, suffix: str = ".dat") -> None:
    for n in range(count):
        tmp = tree.incoming / f".f{n:04d}{suffix}.tmp"
        tmp.write_bytes(b"x" * 100)
        os.rename(tmp, tree.incoming / f"f{n:04d}{suffix}")


def test_status_while_a_burst_drains(tree: Tree, start_daemon: Any) -> None:
    """In flight with stage and age while draining; counts add up; the daemon is seen running."""
    tree.write_config(SLOW, workers=2)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _drop(tree, 120)
    _drop(tree, 2, ".bad")

    def busy() -> dict[str, Any] | None:
        doc = cli_json(tree, "status", schema="status")
        running = [f for f in doc["in_flight"]["shown"] if f["running"]]
        return doc if running else None

    doc = wait_until(busy, timeout=30, interval=0.05, what="a stage running in status")
    pid = daemon.proc.pid
    assert doc["daemon"] == {"running": True, "pid": pid, "data_folder_pid": pid}
    running = next(f for f in doc["in_flight"]["shown"] if f["running"])
    assert running["stage"] == "wait-a-bit"
    assert running["pipeline"] == "slow"
    assert running["file"].startswith("f") and running["age_seconds"] >= 0
    groups = {(g["pipeline"], g["stage"]): g for g in doc["in_flight"]["groups"]}
    assert groups[("slow", "wait-a-bit")]["running"] >= 1
    assert (
        sum(g["running"] + g["waiting"] + g["retrying"] for g in groups.values())
        == doc["in_flight"]["count"]
    )
    total = sum(doc["counts"].values())
    # Read at slightly different moments (folders, then the database): never more
    # than what was dropped, give or take the files moving in between.
    assert 0 < total <= 122 + doc["in_flight"]["count"]

    # The folders are counted before the rows are read: a document read while the
    # last files move may count one in working/ that its rows say has ended.  The
    # burst has drained once one reading shows it all.
    drained_counts = {"incoming": 0, "working": 0, "archived": 120, "failed": 2}

    def drained() -> dict[str, Any] | None:
        d = cli_json(tree, "status", schema="status")
        return d if d["counts"] == drained_counts else None

    done = wait_until(drained, timeout=60, interval=0.1, what=f"status showing {drained_counts}")
    assert done["rate"]["archived"] == 120 and done["rate"]["failed"] == 2
    assert done["rate"]["files_per_second"] > 0
    assert done["in_flight"] == {"count": 0, "groups": [], "shown": []}
    reasons = [f["reason"] for f in done["recent_failures"]]
    assert len(reasons) == 2 and all("line 3 is wrong" in r for r in reasons)
    assert {f["where"] for f in done["recent_failures"]} == {"failed/f0000.bad", "failed/f0001.bad"}

    human = run_cli("status", "--config", str(tree.config))
    assert human.returncode == 0, human.stderr
    assert f"running (pid {daemon.proc.pid})" in human.stdout
    assert "\x1b[" not in human.stdout, "no colour when stdout is not a terminal"
    assert "Recent failures:" in human.stdout and "line 3 is wrong" in human.stdout
    daemon.stop()


def test_status_groups_what_is_in_flight_by_pipeline_and_stage(tree: Tree, tmp_path: Path) -> None:
    """Files alike are one line with counts: running, waiting, retrying; the running
    files are listed after, the waiting ones are not listed one by one."""
    gates = tmp_path / "gates"
    gates.mkdir()
    gated = sh_stage("wait", 'while [ ! -e "$1" ]; do sleep 0.02; done', str(gates / "open"))
    flaky = sh_stage("flaky", "exit 1", retries=2, backoff={"initial": "1h", "max": "1h"})
    tree.write_config(
        pipeline_yaml([gated], name="slow", match="*.dat")
        + "  concurrency: 2\n"
        + pipeline_yaml([flaky], name="flaky", match="*.bad"),
        workers=3,
    )
    with stepped(tree) as s:
        _drop(tree, 6)
        _drop(tree, 1, ".bad")
        try:
            s.until(lambda: bool(s.find("stage.retrying")) and len(s.daemon.scheduler.running) == 2)
            doc = cli_json(tree, "status", schema="status")
            human = run_cli("status", "--config", str(tree.config)).stdout
        finally:
            (gates / "open").touch()
        s.until(lambda: len(s.find("file.archived")) == 6, timeout=30)
    groups = [
        {k: v for k, v in g.items() if k != "oldest_seconds"} for g in doc["in_flight"]["groups"]
    ]
    assert groups == [
        {"pipeline": "slow", "stage": "wait", "running": 2, "waiting": 4, "retrying": 0},
        {"pipeline": "flaky", "stage": "flaky", "running": 0, "waiting": 0, "retrying": 1},
    ]
    assert doc["in_flight"]["count"] == 7
    assert [f["running"] for f in doc["in_flight"]["shown"][:3]] == [True, True, False]
    lines = human.splitlines()
    row = next(line.split() for line in lines if line.split()[:2] == ["slow", "wait"])
    assert row[2:5] == ["2", "4", "0"], human
    assert "Running now:" in human
    assert sum("f000" in line for line in lines) == 2, "only the running files are listed"


def test_status_without_a_daemon_counts_the_backlog(tree: Tree) -> None:
    """Works when the daemon is not running: the backlog is what waits in incoming/."""
    tree.write_config(SLOW)
    _drop(tree, 3)
    assert run_until_idle(tree) == 0
    _drop(tree, 5)
    (tree.incoming / ".hidden").write_bytes(b"")
    (tree.incoming / "half.part").write_bytes(b"")
    doc = cli_json(tree, "status", schema="status")
    assert doc["daemon"] == {"running": False, "pid": None, "data_folder_pid": None}
    assert doc["counts"] == {"incoming": 5, "working": 0, "archived": 3, "failed": 0}
    assert doc["backlog"]["incoming"] == 5
    assert doc["backlog"]["oldest_seconds"] is not None
    human = run_cli("status", "--config", str(tree.config))
    assert "not running" in human.stdout
    assert "5 waiting in incoming/" in human.stdout


def test_status_rate_over_the_last_seconds_and_the_last_minute(tree: Tree) -> None:
    """A burst that ended a moment ago shows at its pace over the last 10 s; half a
    minute later only the minute's rate still counts it."""
    tree.write_config(SLOW)
    _drop(tree, 6)
    _drop(tree, 2, ".bad")
    assert run_until_idle(tree) == 0
    ended = sorted(
        (float(at), str(state)) for at, state in tree.query("SELECT finished_at, state FROM items")
    )
    last = ended[-1][0]
    config = load_config(tree.config)

    def counted(now: float, window: float) -> dict[str, int]:
        seen = [state for at, state in ended if at >= now - window]
        return {"archived": seen.count("archived"), "failed": seen.count("failed")}

    for now in (last, last + 30.0):
        rate = status.collect(config, now)["rate"]
        recent = rate["recent"]
        assert recent["window_seconds"] == 10.0
        assert {k: recent[k] for k in ("archived", "failed")} == counted(now, 10.0)
        assert {k: rate[k] for k in ("archived", "failed")} == counted(now, 60.0)
        assert recent["files_per_second"] == round(sum(counted(now, 10.0).values()) / 10.0, 3)
    assert status.collect(config, last + 30.0)["rate"]["recent"]["files_per_second"] == 0
    assert status.collect(config, last)["rate"]["recent"]["archived"] >= 1
    human = run_cli("status", "--config", str(tree.config)).stdout
    assert "files/s over the last 10 s, " in human and " over the last minute (" in human


def test_status_says_how_many_failures_it_leaves_out(tree: Tree) -> None:
    """Recent failures lists the last few, and says of how many."""
    tree.write_config(SLOW)
    _drop(tree, status.FAILURES_SHOWN + 2, ".bad")
    assert run_until_idle(tree) == 0
    human = run_cli("status", "--config", str(tree.config)).stdout
    shown = status.FAILURES_SHOWN
    assert f"Recent failures: the last {shown} of {shown + 2}" in human, human


def test_status_imports_nothing_of_the_daemon_it_does_not_need(tree: Tree) -> None:
    """A read command starts fast: no structlog, no metrics, no inotify, no stages
    (``-X importtime`` lists every module the real command line imported)."""
    tree.write_config(SLOW)
    _drop(tree, 1)
    assert run_until_idle(tree) == 0
    done = run_cli("status", "--config", str(tree.config), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr
    imported = {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "dropline.commands.status" in imported  # the listing is there
    for heavy in ("structlog", "prometheus_client", "watchdog", "dropline.pipeline"):
        assert heavy not in imported, f"status imported {heavy}"


def test_missing_database_is_a_clear_error(tree: Tree) -> None:
    tree.write_config(SLOW)
    for command in (["status"], ["history", "x"], ["retry", "x"], ["status", "--json"]):
        result = run_cli(*command, "--config", str(tree.config))
        assert result.returncode == 1, (command, result.stderr)
        assert "no state database at" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_unreadable_state_directory_is_a_clear_error() -> None:
    """Another user (not root, not the daemon's) is told "permission denied", exit 1."""
    # Outside pytest's own temporary root, which only root may enter.
    with tempfile.TemporaryDirectory(prefix="dropline-perm-") as top:
        _unreadable_state(make_tree(Path(top)))


def _unreadable_state(tree: Tree) -> None:
    tree.write_config(SLOW)
    assert run_until_idle(tree) == 0
    os.chmod(tree.root, 0o755)
    os.chmod(tree.state_db.parent, 0o700)
    os.chmod(tree.config, 0o644)
    # The command runs in a child that drops to nobody after the modules are loaded
    # (the interpreter itself may live where nobody can read).
    from dropline.cli import main
    from dropline.commands import history, status  # noqa: F401 - loaded before dropping root

    for command in (["status"], ["history", "x"]):
        # Once as root first: every module (standard library too) loaded before the drop.
        main([*command, "--config", str(tree.config)])
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            os.dup2(write_fd, 2)
            sys.stderr = os.fdopen(2, "w")
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = 99
            try:
                code = main([*command, "--config", str(tree.config)])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as f:
            err = f.read().decode()
        _, status_code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status_code) == 1, err
        assert "permission denied" in err and str(tree.state_db) in err, err
        assert "Traceback" not in err
