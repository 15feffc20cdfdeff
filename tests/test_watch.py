"""The watch on incoming/: what dropline relies on from the installed watchdog, and a
watch whose reader dies is replaced, losing nothing.

The pins run ``IncomingWatch`` in a child process that prints each message it
gets, so the child can be frozen (SIGSTOP) while the kernel's queue overflows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import REPO, Tree, wait_until

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")

_CHILD = textwrap.dedent(
    """
    import json, queue, sys
    from pathlib import Path
    from dropline.watch import IncomingWatch

    q = queue.SimpleQueue()
    IncomingWatch(Path(sys.argv[1]), q)
    print(json.dumps({"kind": "started"}), flush=True)
    while True:
        m = q.get()
        fields = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in vars(m).items()}
        print(json.dumps({"kind": type(m).__name__, **fields}), flush=True)
    """
)


class WatchChild:
    """IncomingWatch on FOLDER in a child process; its messages read as they come."""

    def __init__(self, folder: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(folder)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        self.messages: list[dict[str, Any]] = []
        self._partial = ""  # a line read in part (the pipe is read without blocking)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.wait_for("started")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in self.proc.stdout:
            line, self._partial = self._partial + chunk, ""
            if not line.endswith("\n"):
                self._partial = line  # the rest comes with a later read
                continue
            self.messages.append(json.loads(line))

    def kinds(self) -> list[str]:
        self._read()
        return [m["kind"] for m in self.messages]

    def names(self) -> set[str]:
        """The names reported ready so far."""
        self.kinds()
        return {m["name"] for m in self.messages if m["kind"] == "FileReady"}

    def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        wait_until(lambda: kind in self.kinds(), timeout=timeout, what=f"a {kind} message")
        return next(m for m in self.messages if m["kind"] == kind)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def watch_child(tmp_path: Path) -> Iterator[Any]:
    children: list[WatchChild] = []

    def start(folder: Path) -> WatchChild:
        children.append(WatchChild(folder))
        return children[-1]

    yield start
    for child in children:
        child.close()


def test_files_closed_or_renamed_in_are_reported(tmp_path: Path, watch_child: Any) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    child = watch_child(folder)
    (folder / "written.txt").write_text("x")
    (tmp_path / "outside").write_text("y")
    os.rename(tmp_path / "outside", folder / "renamed.txt")
    wait_until(
        lambda: child.names() >= {"written.txt", "renamed.txt"}, timeout=10, what="both names"
    )
    assert "outside" not in child.names()


def test_deleting_the_folder_ends_the_watch(tmp_path: Path, watch_child: Any) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    child = watch_child(folder)
    folder.rmdir()
    lost = child.wait_for("WatchLost")
    assert lost["generation"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_unmounting_the_folder_ends_the_watch(tmp_path: Path, watch_child: Any) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]).returncode:
        pytest.skip("tmpfs could not be mounted here")
    try:
        child = watch_child(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
    lost = child.wait_for("WatchLost")
    assert "unmounted" in lost["reason"] or "removed" in lost["reason"]


@pytest.mark.serial  # lowers a limit of the whole machine for a moment
@pytest.mark.skipif(not os.access(MAX_QUEUED, os.W_OK), reason="needs to lower max_queued_events")
def test_an_overflow_is_reported_and_the_watch_goes_on(tmp_path: Path, watch_child: Any) -> None:
    """IN_Q_OVERFLOW reaches dropline as Overflow (watchdog then calls on_events_lost,
    which must not break its reader), and later files are still reported."""
    folder = tmp_path / "in"
    folder.mkdir()
    original = MAX_QUEUED.read_text()
    try:
        MAX_QUEUED.write_text("16\n")  # applies to inotify instances created now
        child = watch_child(folder)
    finally:
        MAX_QUEUED.write_text(original)
    child.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(200):
            (folder / f"f{i}").write_text("x")
    finally:
        child.proc.send_signal(signal.SIGCONT)
    child.wait_for("Overflow")
    started = time.monotonic()
    (folder / "after.txt").write_text("x")
    wait_until(lambda: "after.txt" in child.names(), timeout=10, what="after.txt reported")
    assert time.monotonic() - started < 5
    assert child.proc.poll() is None


PASSTHROUGH = """
- name: all
  match: "*"
"""


def test_a_reader_that_dies_is_replaced_and_nothing_is_lost(tree: Tree, start_daemon: Any) -> None:
    """The inotify callback raises (as a callback method dropline lacked did): watchdog's
    reader stops.  The loop notices, logs watch.failed, places a new watch and rescans;
    the file that killed the reader and every later one are archived, long before the
    periodic rescan (an hour away)."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon(env={"DROPLINE_FAULT": "watch.event@1"})
    daemon.wait_event("daemon.ready")
    (tree.incoming / "first.txt").write_text("1")
    failed = daemon.wait_event("watch.failed")
    assert "reader" in failed["reason"] or "removed" in failed["reason"]
    # The reader's traceback is one event of the log, not lines amid its lines.
    crash = daemon.wait_event("thread.failed")
    assert "injected fault at watch.event" in crash["error"], crash
    assert "Traceback" in crash["traceback"], crash
    daemon.wait_event("watch.restored")
    wait_until(lambda: (tree.archive / "first.txt").exists(), timeout=10, what="first.txt")
    for i in range(20):
        (tree.incoming / f"after-{i}.txt").write_text(str(i))
    wait_until(
        lambda: all((tree.archive / f"after-{i}.txt").exists() for i in range(20)),
        timeout=10,
        what="files dropped after the failure archived",
    )
    # Seen by the new watch, not by a scan: only the one rescan after the failure ran.
    assert len(daemon.find("scan.started", reason="watch")) == 1
    assert daemon.stop() == 0
    assert len(daemon.find("watch.failed")) == 1


def _another_failure(daemon: Any) -> Callable[[], bool]:
    """True once the daemon replaced its watch after now, or failed.

    watch.restored, not watch.failed: a file written between the two is closed
    before the new watch exists, so no event reaches it (the rescan takes that
    file) and the failure this test waits for would never come."""
    seen = len(daemon.find("watch.restored"))
    return lambda: len(daemon.find("watch.restored")) > seen or bool(daemon.find("daemon.failed"))


def test_a_watch_that_keeps_failing_stops_the_daemon(tree: Tree, start_daemon: Any) -> None:
    """Every reader dies at its first event: after a few replacements in a minute the
    daemon exits non-zero (systemd restarts it) instead of replacing watches for ever."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon(env={"DROPLINE_FAULT": "watch.event"})
    daemon.wait_event("daemon.ready")
    for i in range(20):
        if daemon.find("daemon.failed"):
            break
        another_failure = _another_failure(daemon)  # counted before the file is written
        (tree.incoming / f"f-{i}.txt").write_text(str(i))
        wait_until(another_failure, timeout=10, what="the next watch failure")
    assert daemon.wait(timeout=15) == 1
    assert "failed 6 times" in daemon.find("daemon.failed")[0]["error"]


def test_a_watch_that_cannot_be_placed_again_stops_the_daemon(
    tree: Tree, start_daemon: Any
) -> None:
    """incoming/ replaced by another folder: the daemon never goes on without a watch."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    os.rename(tree.incoming, tree.data / "incoming.old")
    (tree.data / "incoming").mkdir()
    assert daemon.wait(timeout=15) != 0
    assert daemon.find("watch.failed")
