"""The mover process: it moves, the daemon decides; neither outlives the other.

Real daemons, a real mover (``python -m dropline.spool.mover``), real signals.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

from dropline.spool import mover

from .harness import Tree, run_until_idle, wait_until

PASSTHROUGH = """
- name: passthrough
  match: "*.txt"
"""


def _children(pid: int) -> list[int]:
    """The pids whose parent is PID."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _mover_of(daemon_pid: int) -> int:
    def find() -> int | None:
        for pid in _children(daemon_pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"dropline.spool.mover" in cmdline:
                return pid
        return None

    pid: int = wait_until(find, timeout=10, what="the mover process")
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# Enough that the drain is still under way when the test strikes (about a second).
FILES = 10_000


def _archived_count(tree: Tree) -> int:
    return len(os.listdir(tree.archive))  # flat layout: cheaper than tree.archived()


def _under_way(tree: Tree) -> None:
    """Wait until part of the backlog is archived."""
    wait_until(lambda: _archived_count(tree) > 1000, timeout=30, what="the drain under way")


def _not_done(tree: Tree) -> None:
    left = FILES - _archived_count(tree)
    assert left > 0, "the drain ended before the test struck: raise FILES"


def _drop(tree: Tree, count: int, prefix: str = "f") -> dict[str, bytes]:
    files = {f"{prefix}{i:05d}.txt": os.urandom(64 + i % 50) for i in range(count)}
    for name, data in files.items():
        (tree.incoming / name).write_bytes(data)
    return files


def _assert_all_archived_once(tree: Tree, files: dict[str, bytes]) -> None:
    archived = tree.archived()
    assert set(archived) == set(files)
    for name, data in files.items():
        assert archived[name].read_bytes() == data
    assert not list(tree.incoming.iterdir()) and not list(tree.working.iterdir())
    rows = tree.query("SELECT state, count(*) FROM items GROUP BY state")
    assert rows == [("archived", len(files))]


def _draining(tree: Tree, start_daemon: Any) -> tuple[dict[str, bytes], Any, int]:
    """A daemon draining a backlog, part of it archived: (files, daemon, mover pid)."""
    tree.write_config(PASSTHROUGH)
    files = _drop(tree, FILES)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    mover = _mover_of(daemon.proc.pid)
    _under_way(tree)
    return files, daemon, mover


def test_the_mover_dies_with_the_daemon(tree: Tree, start_daemon: Any) -> None:
    """kill -9 of the daemon ends its mover at once (PR_SET_PDEATHSIG): no file is
    moved by an orphan while a new daemon recovers; the restart loses nothing."""
    files, daemon, mover = _draining(tree, start_daemon)
    daemon.proc.kill()
    daemon.wait()
    _not_done(tree)
    wait_until(lambda: not _alive(mover), timeout=5, what="the mover gone with the daemon")
    assert run_until_idle(tree) == 0
    _assert_all_archived_once(tree, files)


def test_a_dead_mover_stops_the_daemon(tree: Tree, start_daemon: Any) -> None:
    """If the mover dies, the daemon exits 1 saying so (systemd restarts it); the
    restart completes every recorded intent and loses nothing."""
    files, daemon, mover = _draining(tree, start_daemon)
    os.kill(mover, signal.SIGKILL)
    assert daemon.wait(15) == 1
    _not_done(tree)
    failed = daemon.find("daemon.failed")
    assert failed and "mover process ended" in failed[0]["error"], daemon.text()[-2000:]
    assert run_until_idle(tree) == 0
    _assert_all_archived_once(tree, files)


def test_sigterm_to_the_whole_group_drains_cleanly(tree: Tree, start_daemon: Any) -> None:
    """systemd's stop signals every process of the unit: the mover ignores SIGTERM
    and ends when the daemon, done with its batches, closes the pipe."""
    files, daemon, mover = _draining(tree, start_daemon)
    os.kill(mover, signal.SIGTERM)
    daemon.signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.wait(15) == 0, daemon.text()[-2000:]
    _not_done(tree)
    assert time.monotonic() - started < 5
    wait_until(lambda: not _alive(mover), timeout=5, what="the mover ended")
    assert not daemon.find("daemon.failed")
    assert run_until_idle(tree) == 0
    _assert_all_archived_once(tree, files)


def test_big_batches_of_long_names_never_deadlock(tree: Tree) -> None:
    """Requests and answers larger than a pipe's buffer (long names, big batches):
    the mover reads requests while it answers, so neither side waits on the other
    for good."""
    tree.write_config(PASSTHROUGH, batch_size=2000, max_in_flight=8000)
    files = {}
    for i in range(6000):
        name = f"{i:05d}-" + "n" * 240 + ".txt"
        files[name] = name.encode()
    for name, data in files.items():
        (tree.incoming / name).write_bytes(data)
    assert run_until_idle(tree, timeout=60) == 0
    _assert_all_archived_once(tree, files)


def test_a_finish_batch_across_many_day_folders(tmp_path: Path) -> None:
    """The mover keeps every day folder of a batch open until it is fsynced (a
    batch of retried finishes may reach back over many days)."""
    data = tmp_path / "data"
    for sub in ("incoming", "working", "archive", "failed"):
        (data / sub).mkdir(parents=True)
    days = [f"2026-11-{d:02d}" for d in range(20, 27)]
    for day in days:
        (data / "archive" / day).mkdir()
        (data / "working" / f"{day}.txt").write_bytes(day.encode())
    flags = os.O_RDONLY | os.O_DIRECTORY
    fds = [os.open(data / sub, flags) for sub in ("incoming", "working", "archive", "failed")]
    try:
        folders = mover.Folders(*fds)
        moves = [(f"{day}.txt".encode(), f"archive/{day}", f"{day}.txt".encode()) for day in days]
        assert mover.finish(folders, moves) == [0] * len(days)
        again = [(b"gone.txt", f"archive/{days[0]}", b"gone.txt")]
        assert mover.finish(folders, again) == [errno.ENOENT]
    finally:
        for fd in fds:
            os.close(fd)
    for day in days:
        assert (data / "archive" / day / f"{day}.txt").read_bytes() == day.encode()
    assert not list((data / "working").iterdir())


def test_claims_from_folders_never_go_through_a_symlink(tmp_path: Path) -> None:
    """A claim of incoming/FOLDER/NAME opens each folder without following: a folder
    swapped for a symlink to elsewhere answers ENOENT (not claimed) and what lies
    behind the link stays where it is; a real folder's file is claimed, and its
    finish keeps the folder under archive/."""
    data = tmp_path / "data"
    for sub in ("incoming", "working", "archive", "failed"):
        (data / sub).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_bytes(b"secret")
    os.symlink(elsewhere, data / "incoming" / "swapped")
    (data / "incoming" / "batch" / "deep").mkdir(parents=True)
    (data / "incoming" / "batch" / "deep" / "a.txt").write_bytes(b"a")
    flags = os.O_RDONLY | os.O_DIRECTORY
    fds = [os.open(data / sub, flags) for sub in ("incoming", "working", "archive", "failed")]
    try:
        folders = mover.Folders(*fds)
        claims = [(b"swapped/secret.txt", b"secret.txt"), (b"batch/deep/a.txt", b"a.txt")]
        assert mover.claim(folders, claims) == [errno.ENOENT, 0]
        assert mover.finish(folders, [(b"a.txt", "archive", b"batch/deep/a.txt")]) == [0]
    finally:
        for fd in fds:
            os.close(fd)
    assert (elsewhere / "secret.txt").read_bytes() == b"secret"
    assert not (data / "working" / "secret.txt").exists()
    assert (data / "archive" / "batch" / "deep" / "a.txt").read_bytes() == b"a"
    assert not list((data / "working").iterdir())
