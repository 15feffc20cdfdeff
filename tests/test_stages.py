"""Stages through a real daemon: retries and backoff, exit 65, timeouts, crashes, Python, builtins.

Every test runs ``python -m dropline run`` as a subprocess with real command stages
(``/bin/sh`` scripts), real Python stage modules and the real state database, and
waits on conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, run_cli, run_until_idle, wait_until

StartDaemon = Callable[..., DaemonProcess]


# --- helpers -------------------------------------------------------------------


def pipeline_yaml(stages: list[dict[str, Any]], name: str = "work", match: str = "*") -> str:
    """One pipeline in block YAML; every value JSON-encoded (JSON is valid YAML flow)."""
    lines = [f"- name: {name}", f"  match: {json.dumps(match)}", "  stages:"]
    for stage in stages:
        for i, (key, value) in enumerate(stage.items()):
            prefix = "    - " if i == 0 else "      "
            lines.append(f"{prefix}{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def sh_stage(name: str, script: str, *args: str, **options: Any) -> dict[str, Any]:
    """A command stage running SCRIPT with /bin/sh (as an argv list: no shell string parsing)."""
    return {"name": name, "command": ["/bin/sh", "-c", script, "sh", *args], **options}


def attempts_of(tree: Tree, name: str) -> list[tuple[int, str | None, float, float | None]]:
    """(attempt, outcome, started_at, ended_at) of every stage attempt of file NAME, in order."""
    rows = tree.query(
        "SELECT a.attempt, a.outcome, a.started_at, a.ended_at FROM attempts a "
        "JOIN items i ON a.item_id = i.id WHERE i.name = ? ORDER BY a.id",
        (name.encode(),),
    )
    return [(int(r[0]), r[1], float(r[2]), r[3]) for r in rows]


def item_of(tree: Tree, name: str) -> dict[str, Any]:
    """The items row of file NAME as a dict (there must be exactly one)."""
    rows = tree.query(
        "SELECT state, attempt, next_attempt_at, metadata, next_stage FROM items WHERE name = ?",
        (name.encode(),),
    )
    assert len(rows) == 1, rows
    state, attempt, next_attempt_at, metadata, next_stage = rows[0]
    return {
        "state": state,
        "attempt": attempt,
        "next_attempt_at": next_attempt_at,
        "metadata": json.loads(metadata),
        "next_stage": next_stage,
    }


def error_doc(tree: Tree, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tree.failed / f"{name}.error.json").read_text())
    return doc


def pid_gone(pid: int) -> bool:
    """True once PID no longer runs; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] == "Z"


def read_pid(path: Path, timeout: float = 10.0) -> int:
    """Wait for a pid file written by a stage script and return the pid in it."""
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout, what=f"{path}")
    return int(path.read_text())


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the first line of PATH containing TEXT."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


# --- retries and failures --------------------------------------------------------


def test_retry_backoff_survives_a_restart(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A pending retry is persisted: after SIGKILL and restart it runs no earlier than due."""
    marker = tmp_path / "ok-now"
    script = '[ -e "$1" ] || { echo "not yet" >&2; exit 1; }'
    stage = sh_stage(
        "flaky", script, str(marker), retries=3, backoff={"initial": "2s", "max": "2s"}
    )
    tree.write_config(pipeline_yaml([stage]))
    first = start_daemon()
    first.wait_event("daemon.ready")
    (tree.incoming / "r.txt").write_bytes(b"retry me\n")
    event = first.wait_event("stage.retrying", file="r.txt")
    assert event["attempt"] == 1 and event["stage"] == "flaky"
    # The event may be logged a moment before its transaction commits: wait for the row.
    wait_until(lambda: item_of(tree, "r.txt")["attempt"] == 1, what="attempt 1 committed")
    item = item_of(tree, "r.txt")
    due = item["next_attempt_at"]
    assert isinstance(due, float)
    ((_, outcome, _, ended_at),) = attempts_of(tree, "r.txt")
    assert outcome == "retrying" and ended_at is not None
    # Equal jitter on a 2 s delay: between 1 and 2 s after the failure was recorded.
    assert 1.0 - 1e-6 <= due - ended_at <= 2.0 + 1e-6
    assert due - time.time() <= 2.0
    first.kill()

    marker.touch()  # the next attempt succeeds, whenever it runs
    second = start_daemon()
    second.wait_event("daemon.ready")
    wait_until(lambda: "r.txt" in tree.archived(), timeout=10, what="r.txt archived")
    rows = attempts_of(tree, "r.txt")
    assert [(a, o) for a, o, _, _ in rows] == [(1, "retrying"), (2, "succeeded")]
    started_again = rows[1][2]
    assert started_again >= due - 0.05, (
        f"retry ran {due - started_again:.3f} s before it was due after the restart"
    )
    assert second.stop() == 0


def test_timeout_kills_the_whole_process_group(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """On timeout the stage's process group is killed, a grandchild that ignores TERM too."""
    pidfile = tmp_path / "grandchild.pid"
    script = (
        '/bin/sh -c \'trap "" TERM; echo $$ > "$1"; exec sleep 60\' grandchild "$1" &\nsleep 60\n'
    )
    stage = sh_stage("slow", script, str(pidfile), timeout="1s", retries=0)
    tree.write_config(pipeline_yaml([stage]))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "t.txt").write_bytes(b"t")
    pid = read_pid(pidfile)
    try:
        assert not pid_gone(pid)
        wait_until(lambda: "t.txt" in tree.failed_files(), timeout=10, what="t.txt failed")
        doc = error_doc(tree, "t.txt")
        assert "timed out" in doc["error"] and "slow" in doc["error"]
        assert doc["attempts"] == 1
        wait_until(lambda: pid_gone(pid), timeout=5, what=f"grandchild {pid} gone")
        assert daemon.stop() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- crashes and idempotency --------------------------------------------------------


def _crash_during_stage(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path, *, idempotent: bool
) -> list[str]:
    """Run a slow stage, SIGKILL the daemon while it runs, restart until idle.

    The stage appends a line to a runs file on every run; only the first run is slow.
    Returns the lines of the runs file.
    """
    runs, first, pidfile = tmp_path / "runs", tmp_path / "first", tmp_path / "stage.pid"
    script = 'echo $$ > "$3"\necho run >> "$1"\n[ -e "$2" ] && exit 0\ntouch "$2"\nexec sleep 30\n'
    stage = sh_stage("load", script, str(runs), str(first), str(pidfile), idempotent=idempotent)
    tree.write_config(pipeline_yaml([stage]))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "n.txt").write_bytes(b"once\n")
    wait_until(first.exists, what="the stage to start")
    pid = int(pidfile.read_text())
    daemon.kill()
    try:
        # The stage leads its own session, so it outlives the daemon: kill its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: pid_gone(pid), timeout=5, what="the orphaned stage gone")
        assert run_until_idle(tree, timeout=20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return runs.read_text().splitlines()


def test_non_idempotent_stage_is_not_rerun_after_crash(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A non-idempotent stage interrupted by SIGKILL fails its file as indeterminate."""
    runs = _crash_during_stage(tree, start_daemon, tmp_path, idempotent=False)
    assert runs == ["run"], "the non-idempotent stage ran again after the crash"
    assert (tree.failed / "n.txt").read_bytes() == b"once\n"
    doc = error_doc(tree, "n.txt")
    assert "indeterminate" in doc["error"]
    assert doc["stage"] == "load"
    assert not tree.archived()
    assert [o for _, o, _, _ in attempts_of(tree, "n.txt")] == ["indeterminate"]


def test_idempotent_stage_is_rerun_after_crash(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The contrast: an idempotent stage interrupted by SIGKILL runs again and archives."""
    runs = _crash_during_stage(tree, start_daemon, tmp_path, idempotent=True)
    assert runs == ["run", "run"]
    assert tree.archived()["n.txt"].read_bytes() == b"once\n"
    assert not tree.failed_files()
    assert [o for _, o, _, _ in attempts_of(tree, "n.txt")] == ["interrupted", "succeeded"]


def test_indeterminate_error_counts_the_interrupted_attempt(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The error.json of an indeterminate file counts the one attempt that was interrupted.

    Fails today: recovery writes ``"attempts": 0`` (the row's count of *failed* attempts),
    although exit 65 and exhausted retries count every attempt made, the last included.
    """
    _crash_during_stage(tree, start_daemon, tmp_path, idempotent=False)
    assert error_doc(tree, "n.txt")["attempts"] == 1


def test_non_idempotent_stage_is_not_rerun_after_a_stop(
    tree: Tree, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A non-idempotent stage cut short by SIGTERM (past stop_timeout) is not run again.

    Killing it mid-way on a stop leaves its effect just as unknown as a crash does, and
    recovery's own reason says "interrupted (crash or stop)". Fails today: the attempt is
    closed as "interrupted" at the stop, so recovery never sees it and the restarted daemon
    runs the stage a second time.
    """
    runs, first = tmp_path / "runs", tmp_path / "first"
    script = 'echo run >> "$1"\n[ -e "$2" ] && exit 0\ntouch "$2"\nexec sleep 30\n'
    stage = sh_stage("load", script, str(runs), str(first), idempotent=False)
    tree.write_config(pipeline_yaml([stage]), stop_timeout="0.3s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "s.txt").write_bytes(b"stop\n")
    wait_until(first.exists, what="the stage to start")
    assert daemon.stop() == 0  # the stage leads a session: the daemon's stop kills it
    assert run_until_idle(tree, timeout=20) == 0
    assert runs.read_text().splitlines() == ["run"], "the non-idempotent stage ran again"
    assert (tree.failed / "s.txt").read_bytes() == b"stop\n"
    assert "indeterminate" in error_doc(tree, "s.txt")["error"]


# --- Python and builtin stages ---------------------------------------------------------

MYSTAGES = '''\
"""Test stages: count lines, reject files named *bad*."""

from dropline.errors import PermanentError


def count_lines(ctx):
    with ctx.path.open("rb") as f:
        return {"lines": sum(1 for _ in f)}


def reject_bad(ctx):
    if "bad" in ctx.name:
        raise PermanentError(f"{ctx.name} is bad")
    return {"checked": True}
'''


def test_python_stages_metadata_and_permanent_error(tree: Tree, tmp_path: Path) -> None:
    """Python stages from pipelines_dir/<pipeline>/: metadata is kept; PermanentError fails."""
    pipelines_dir = tmp_path / "pipelines"
    (pipelines_dir / "textproc").mkdir(parents=True)
    (pipelines_dir / "textproc" / "mystages.py").write_text(MYSTAGES)
    stages: list[dict[str, Any]] = [
        {"name": "count", "python": "mystages:count_lines"},
        {
            "name": "reject",
            "python": "mystages:reject_bad",
            "retries": 3,
            "backoff": {"initial": "5s", "max": "5s"},
        },
    ]
    tree.write_config(
        pipeline_yaml(stages, name="textproc", match="*.txt"), pipelines_dir=str(pipelines_dir)
    )
    (tree.incoming / "good.txt").write_bytes(b"one\ntwo\nthree\n")
    (tree.incoming / "bad.txt").write_bytes(b"x\n")
    started = time.monotonic()
    assert run_until_idle(tree, timeout=20) == 0
    assert time.monotonic() - started < 5, "the permanent error was retried"

    assert tree.archived()["good.txt"].read_bytes() == b"one\ntwo\nthree\n"
    good = item_of(tree, "good.txt")
    assert good["state"] == "archived"
    assert good["metadata"] == {"lines": 3, "checked": True}

    assert (tree.failed / "bad.txt").read_bytes() == b"x\n"
    doc = error_doc(tree, "bad.txt")
    assert doc["stage"] == "reject"
    assert doc["attempts"] == 1
    assert "bad.txt is bad" in doc["error"] and "permanent" in doc["error"]
    assert [o for _, o, _, _ in attempts_of(tree, "bad.txt")] == ["succeeded", "failed"]


def test_unimportable_python_stage_is_a_config_error(tree: Tree, tmp_path: Path) -> None:
    """`dropline check` exits 2 naming file:line and the module a stage cannot import."""
    pipelines_dir = tmp_path / "pipelines"
    (pipelines_dir / "broken").mkdir(parents=True)
    (pipelines_dir / "broken" / "brokenmod.py").write_text("import dropline_no_such_dep\n")
    stages: list[dict[str, Any]] = [
        {"name": "ok", "builtin": "noop"},
        {"name": "wreck", "python": "brokenmod:run"},
    ]
    tree.write_config(pipeline_yaml(stages, name="broken"), pipelines_dir=str(pipelines_dir))
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 2, result.stdout + result.stderr
    line = line_of(tree.config, 'name: "wreck"')
    assert f"{tree.config}:{line}" in result.stderr
    assert '"brokenmod"' in result.stderr
    assert "dropline_no_such_dep" in result.stderr
    assert "Traceback" not in result.stderr


def test_builtin_sha256_records_the_digest(tree: Tree) -> None:
    """The sha256 builtin puts the file's SHA-256 in the item's metadata."""
    tree.write_config(pipeline_yaml([{"name": "hash", "builtin": "sha256"}]))
    payload = os.urandom(3 * 1024 * 1024 + 7)  # more than one read chunk
    (tree.incoming / "blob.bin").write_bytes(payload)
    assert run_until_idle(tree) == 0
    assert tree.archived()["blob.bin"].read_bytes() == payload
    item = item_of(tree, "blob.bin")
    assert item["metadata"] == {"sha256": hashlib.sha256(payload).hexdigest()}


def test_every_placeholder_is_substituted_once(tree: Tree, tmp_path: Path) -> None:
    """Each placeholder becomes its value, and a value holding "{stage}" is left as it is."""
    out = tmp_path / "args"
    script = 'out=$1; shift; printf "%s\\n" "$@" > "$out"'
    argv = [str(out), "{name}", "{item_id}", "{pipeline}", "{stage}", "path={path}"]
    tree.write_config(pipeline_yaml([sh_stage("show", script, *argv)], name="pipe"))
    name = "a{stage}{name}.txt"
    (tree.incoming / name).write_bytes(b"x")
    assert run_until_idle(tree) == 0
    assert set(tree.archived()) == {name}
    shown = out.read_text().splitlines()
    ((item_id,),) = tree.query("SELECT id FROM items WHERE name = ?", (name.encode(),))
    assert shown[:4] == [name, item_id, "pipe", "show"]
    assert shown[4].startswith(f"path={tree.working}/") and shown[4].endswith(name)


@pytest.mark.parametrize("command", ["check", "run"])
def test_unknown_builtin_is_a_config_error(tree: Tree, command: str) -> None:
    """An unknown builtin name exits 2 with file:line and the list of allowed builtins."""
    tree.write_config(pipeline_yaml([{"name": "hash", "builtin": "sha512"}]))
    result = run_cli(command, "--config", str(tree.config), timeout=15)
    assert result.returncode == 2, result.stdout + result.stderr
    line = line_of(tree.config, 'name: "hash"')
    assert f"{tree.config}:{line}" in result.stderr
    assert 'unknown builtin "sha512"' in result.stderr
    assert "allowed: noop, postgres-load, publish, sha256, sqlite-load" in result.stderr
    assert "Traceback" not in result.stderr


# --- isolation -------------------------------------------------------------------------
