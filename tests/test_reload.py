"""`dropline reload` against a real daemon: the daemon's own verdict, visibly.

Each test runs a real daemon subprocess with a real AF_UNIX datagram socket as
NOTIFY_SOCKET, then runs `python -m dropline reload` as a subprocess, the way
the unit's ExecReload= does: exit 0 and applied; a broken file refused with
its file, line and key while the daemon keeps its configuration and says so
in STATUS=; a file valid when checked that the daemon refuses; no daemon; a
daemon that does not answer; changes a reload cannot apply named in warnings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import REPO, DaemonProcess, Tree, run_cli, wait_until
from .test_notify import Notice, NotifySocket

FIRST = """
- name: first
  match: "*"
"""

WITH_CSV = """
- name: csv
  match: "*.csv"
  stages:
    - name: noop
      command: ["true"]
- name: first
  match: "*"
"""

# The one-line form of a configuration error: "FILE:LINE: KEY: what".
ERROR_LINE = re.compile(r"^dropline: error: (?P<file>/[^:]+):(?P<line>\d+): (?P<key>[\w.\[\]]+): ")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def reload(tree: Tree, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli("reload", "--config", str(tree.config), *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def started(tree: Tree, notify: NotifySocket, start_daemon: Any, pipelines: str) -> DaemonProcess:
    tree.write_config(pipelines)
    daemon: DaemonProcess = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    return daemon


def claimed_pipeline(daemon: DaemonProcess, tree: Tree, name: str) -> str:
    (tree.incoming / name).write_bytes(name.encode())
    claimed = daemon.wait_event("file.claimed", file=name)
    daemon.wait_event("file.archived", file=name)
    return str(claimed["pipeline"])


def status_after(notify: NotifySocket, after: float, text: str, daemon: DaemonProcess) -> Notice:
    """The first STATUS= at or after AFTER that holds TEXT."""

    def first(notices: list[Notice]) -> Notice | None:
        return next(
            (n for n in notices if n.at >= after and text in n.fields.get("STATUS", "")), None
        )

    return notify.wait_for(first, 10, f"STATUS= holding {text!r}", daemon)


def latest_status(notify: NotifySocket) -> str:
    return notify.notices("STATUS")[-1].fields["STATUS"]


def test_good_reload_exits_0_and_applies(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    daemon = started(tree, notify, start_daemon, FIRST)
    assert claimed_pipeline(daemon, tree, "before.csv") == "first"

    tree.write_config(WITH_CSV)
    result = reload(tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dropline: reloaded {tree.config} (pipelines: csv, first)"
    assert result.stderr == ""
    daemon.wait_event("daemon.reloaded")  # already there: the command waited for it
    assert claimed_pipeline(daemon, tree, "after.csv") == "csv"
    # A reload through the command is announced to systemd as one by SIGHUP is.
    assert notify.notices("RELOADING", "1")
    assert daemon.stop() == 0


@pytest.mark.parametrize("broken", ["unknown-key", "invalid-yaml"])
def test_broken_file_fails_with_its_error_and_status_shows_it(
    tree: Tree, notify: NotifySocket, start_daemon: Any, broken: str
) -> None:
    """Exit 2, the error's file, line and key; the daemon (sent SIGHUP through --pid)
    keeps its configuration and says so in STATUS= until a good reload."""
    daemon = started(tree, notify, start_daemon, WITH_CSV)
    if broken == "invalid-yaml":
        tree.config.write_text(tree.config.read_text() + "  - name: {broken\n")
    else:
        tree.write_config(FIRST, workerz=2)
    before = time.monotonic()
    result = reload(tree, "--pid", str(daemon.proc.pid))
    assert result.returncode == 2, result
    first_line = result.stderr.splitlines()[0]
    if broken == "unknown-key":
        found = ERROR_LINE.match(first_line)
        assert found, first_line
        assert (found["file"], found["key"]) == (str(tree.config), "workerz")
        assert tree.config.read_text().splitlines()[int(found["line"]) - 1].startswith("workerz:")
    else:
        assert first_line.startswith(f"dropline: error: {tree.config}:"), first_line
    assert f"(pid {daemon.proc.pid}) was sent SIGHUP" in result.stderr

    rejected = daemon.wait_event("config.rejected")
    assert str(tree.config) in rejected["error"]
    status = status_after(notify, before, "reload refused: ", daemon).fields["STATUS"]
    assert "running the previous configuration" in status, status
    assert (rejected["error"][:40]) in status, status
    # Busy or idle, the STATUS= lines that follow keep saying it.
    assert claimed_pipeline(daemon, tree, "kept.csv") == "csv"
    wait_until(lambda: "archived 1" in latest_status(notify), what="STATUS= with archived 1")
    assert latest_status(notify).startswith("reload refused: "), latest_status(notify)

    tree.write_config(FIRST)
    assert reload(tree).returncode == 0
    assert "reload refused" not in latest_status(notify), latest_status(notify)
    assert claimed_pipeline(daemon, tree, "fixed.csv") == "first"
    assert daemon.stop() == 0


def test_broken_file_without_pid_is_reported_and_not_sent(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    daemon = started(tree, notify, start_daemon, WITH_CSV)
    tree.write_config(FIRST, workerz=2)
    result = reload(tree)
    assert result.returncode == 2
    assert ERROR_LINE.match(result.stderr), result.stderr
    assert "not sent to the daemon" in result.stderr
    assert claimed_pipeline(daemon, tree, "kept.csv") == "csv"
    assert not daemon.find("daemon.reloading")
    assert daemon.stop() == 0


def test_pid_of_another_program_is_never_signalled(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """SIGHUP ends most programs: --pid is signalled only if it is `dropline run`."""
    started(tree, notify, start_daemon, WITH_CSV)
    tree.write_config(FIRST, workerz=2)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        result = reload(tree, "--pid", str(bystander.pid))
        assert result.returncode == 2
        assert f"pid {bystander.pid} is not a running dropline daemon" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_file_valid_when_checked_but_refused_by_the_daemon(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """data_dir cannot change on reload: the command's own check passes, the daemon
    refuses; its reason comes back (exit 2) and the daemon keeps data_dir."""
    daemon = started(tree, notify, start_daemon, WITH_CSV)
    other = tree.root / "other-data"
    text = tree.config.read_text().replace(f"data_dir: {tree.data}", f"data_dir: {other}")
    tree.config.write_text(text)
    before = time.monotonic()
    result = reload(tree)
    assert result.returncode == 2, result
    found = ERROR_LINE.match(result.stderr)
    assert found and found["key"] == "data_dir" and found["line"] == "1", result.stderr
    assert "cannot change on reload" in result.stderr
    assert "the daemon refused it" in result.stderr
    status = status_after(notify, before, "reload refused: ", daemon).fields["STATUS"]
    assert "data_dir: cannot change on reload" in status, status
    assert not other.exists()
    assert claimed_pipeline(daemon, tree, "kept.csv") == "csv"
    assert daemon.stop() == 0


def test_state_db_moved_in_the_file_is_refused(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """The file names a state no daemon runs on while --pid is one: state_db changed."""
    daemon = started(tree, notify, start_daemon, WITH_CSV)
    moved = tree.root / "moved"
    moved.mkdir()
    text = tree.config.read_text().replace(str(tree.state_db), str(moved / "state.db"))
    tree.config.write_text(text)
    result = reload(tree, "--pid", str(daemon.proc.pid))
    assert result.returncode == 2, result
    found = ERROR_LINE.match(result.stderr)
    assert found and found["key"] == "state_db", result.stderr
    rejected = daemon.wait_event("config.rejected")
    assert "state_db: cannot change on reload" in rejected["error"]
    assert daemon.stop() == 0


def test_no_daemon_is_a_clear_error(tree: Tree) -> None:
    tree.write_config(FIRST)
    result = reload(tree)
    assert result.returncode == 1
    assert result.stderr.startswith("dropline: error: no dropline daemon runs on the state in ")
    assert "applies when dropline starts" in result.stderr


def test_a_daemon_that_does_not_answer_times_out_and_the_request_is_withdrawn(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    daemon = started(tree, notify, start_daemon, FIRST)
    daemon.signal(signal.SIGSTOP)
    try:
        result = reload(tree, "--wait", "1")
    finally:
        daemon.signal(signal.SIGCONT)
    assert result.returncode == 1, result
    assert "did not answer the reload within 1 s" in result.stderr
    assert tree.query("SELECT kind, result FROM requests") == [
        ("reload", "withdrawn: no answer within 1 s")
    ]
    # Withdrawn: the daemon, running again, does not act on it.
    assert reload(tree).returncode == 0
    assert len(daemon.find("daemon.reloading")) == 1
    assert daemon.stop() == 0


def test_a_daemon_that_dies_before_answering_is_reported(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    daemon = started(tree, notify, start_daemon, FIRST)
    daemon.signal(signal.SIGSTOP)
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    waiting = subprocess.Popen(
        [sys.executable, "-m", "dropline", "reload", "--config", str(tree.config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(lambda: tree.query("SELECT count(*) FROM requests")[0][0] == 1, what="request")
        daemon.kill()
        _, stderr = waiting.communicate(timeout=15)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    assert "the daemon stopped before it answered the reload" in stderr


def test_changes_a_reload_cannot_apply_are_named(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """workers (and log_format, pipelines_dir, metrics): applied is the rest, the
    warning names the key, at every reload until a restart."""
    daemon = started(tree, notify, start_daemon, FIRST)
    tree.write_config(WITH_CSV, workers=7)
    for attempt in (1, 2):
        result = reload(tree)
        assert result.returncode == 0, result.stderr
        warning = result.stderr.strip()
        assert warning.startswith(f"dropline: warning: {tree.config}:"), warning
        assert "workers: changed from 4 to 7, which a reload cannot apply" in warning
        events = daemon.find("config.restart_needed", key="workers")
        assert len(events) == attempt
        assert events[-1]["warning"] in warning
    assert claimed_pipeline(daemon, tree, "applied.csv") == "csv"  # the rest applied
    assert daemon.stop() == 0


def test_archive_layout_and_max_file_size_apply_on_reload(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """Not silently ignored either: the next files follow them."""
    daemon = started(tree, notify, start_daemon, FIRST)
    tree.write_config(FIRST, archive_layout="daily", max_file_size=5)
    result = reload(tree)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (tree.incoming / "small").write_bytes(b"tiny")
    (tree.incoming / "large").write_bytes(b"too large")
    daemon.wait_event("file.archived", file="small")
    daemon.wait_event("entry.refused", file="large")
    assert [p.parent.parent for p in tree.archive.rglob("small")] == [tree.archive]
    assert (tree.incoming / "large").exists()
    assert daemon.stop() == 0


def test_reloads_at_once_each_get_the_verdict(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    daemon = started(tree, notify, start_daemon, FIRST)
    tree.write_config(WITH_CSV)
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    argv = [sys.executable, "-m", "dropline", "reload", "--config", str(tree.config)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert tree.query("SELECT count(*) FROM requests WHERE result LIKE '{%'")[0][0] == 3
    assert daemon.stop() == 0
