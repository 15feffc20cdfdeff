"""A file held open for writing is never taken: the read-lease probe (``lease.py``).

Real writer processes hold files open in incoming/ (and in working/); the
daemon runs as root here, so it may take leases on any file.  A test-only
hook (DROPLINE_LEASE_HOLD) keeps each lease for a while, so that a writer can
open the file inside the probe; another (DROPLINE_LEASE_REFUSE) answers every
probe as a filesystem that refuses leases would.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dropline.lease import LeaseProbe, catch_lease_breaks
from dropline.spool import Entry, HeldOpenError, Spool

from .harness import Tree, wait_until

PASSTHROUGH = """
- name: plain
  match: "*"
"""

# A writer process driven line by line on its stdin; it answers "ok" to each:
# "open" opens the file once more for writing (append), "write N" writes N bytes
# through the newest descriptor, "close" closes the oldest one.
_WRITER = r"""
import os, sys
path = sys.argv[1]
fds = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "open":
        fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    elif cmd == "write":
        os.write(fds[-1], b"x" * int(arg))
    elif cmd == "close":
        os.close(fds.pop(0))
    print("ok", flush=True)
"""


class Writer:
    """A real process that holds a file open for writing, told what to do."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, *commands: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for command in commands:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "ok", f"writer failed at {command}"

    def send(self, command: str) -> None:
        """Send without waiting for the answer (an open that blocks on a lease)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answered(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ok"

    def end(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def _archived_whole(tree: Tree, name: str, size: int) -> bool:
    found = tree.archived().get(name)
    return found is not None and found.stat().st_size == size


def test_a_file_held_open_at_start_is_not_claimed_until_closed(
    tree: Tree, start_daemon: Any, writers: list[Writer]
) -> None:
    """Written, paused longer than settle_time, not closed, across a daemon start:
    the scan finds it settled, the probe finds it open; taken whole once closed."""
    tree.write_config(PASSTHROUGH, settle_time="0.2s")
    writer = Writer(tree.incoming / "big.csv")
    writers.append(writer)
    writer.do("open", "write 1048576")
    time.sleep(0.3)  # older than settle_time: timing alone would take it now
    daemon = start_daemon()
    daemon.wait_event("file.held_open", file="big.csv")
    # Looked at again and again (every half second) while open: still there, logged once.
    wait_until(lambda: daemon.find("scan.completed"), what="the start-up scan")
    time.sleep(1.2)  # not synchronisation: the time in which it is probed twice more
    assert (tree.incoming / "big.csv").exists()
    assert not tree.archived() and not list(tree.working.iterdir())
    assert len(daemon.find("file.held_open", file="big.csv")) == 1
    writer.do("write 1048576", "close")
    wait_until(lambda: _archived_whole(tree, "big.csv", 2 << 20), what="big.csv archived whole")
    assert not daemon.find("file.busy")
    assert daemon.stop() == 0


def test_a_close_while_another_descriptor_is_open_is_not_the_end(
    tree: Tree, start_daemon: Any, writers: list[Writer]
) -> None:
    """A writer that closed the file and opened it again (its close event came
    while it held it open): not taken while open, taken whole once closed."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    writer = Writer(tree.incoming / "log.txt")
    writers.append(writer)
    writer.do("open", "write 1000", "open", "close")  # IN_CLOSE_WRITE; still open
    daemon.wait_event("file.held_open", file="log.txt")
    assert (tree.incoming / "log.txt").exists() and not tree.archived()
    writer.do("write 500", "close")
    wait_until(lambda: _archived_whole(tree, "log.txt", 1500), what="log.txt archived whole")
    assert daemon.stop() == 0


def _lease_held(pid: int, path: Path) -> bool:
    """Whether /proc/locks shows a lease of PID on PATH's inode."""
    ino = path.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "LEASE" in fields and str(pid) in fields and any(f.endswith(f":{ino}") for f in fields):
            return True
    return False


def test_a_writer_opening_during_the_probe_breaks_the_lease_harmlessly(
    tree: Tree, start_daemon: Any, writers: list[Writer]
) -> None:
    """The lease is held (the hook keeps it 1.5 s) when a writer opens the file:
    the kernel sends the daemon SIGIO, its open() waits for the release; the
    daemon lives on, sees the writer, puts the file back, and takes it only once
    it is closed.

    The claim's probe is the one after its rename (the file in working/: the
    writer opens it there, as one that found it by its inode would); a file
    found held open there is probed before the rename from then on."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon(env={"DROPLINE_LEASE_HOLD": "1.5"})
    daemon.wait_event("daemon.ready")
    tmp = tree.incoming / ".drop.tmp"
    tmp.write_bytes(b"a" * 100)
    os.rename(tmp, tree.incoming / "drop.txt")  # IN_MOVED_TO: claimed at once
    claimed = tree.working / "drop.txt"
    wait_until(
        lambda: claimed.exists() and _lease_held(daemon.proc.pid, claimed),
        what="the lease on drop.txt in working/",
    )
    writer = Writer(claimed)
    writers.append(writer)
    began = time.monotonic()
    writer.send("open")
    writer.answered()  # its open() returned once the daemon released the lease
    assert time.monotonic() - began < 5
    daemon.wait_event("file.held_open", file="drop.txt")
    assert daemon.proc.poll() is None, daemon.text()[-2000:]
    # Put back where it was dropped; the writer's descriptor goes with it.
    assert (tree.incoming / "drop.txt").exists() and not tree.archived()
    assert not daemon.find("file.busy")
    writer.do("write 50", "close")
    wait_until(
        lambda: _archived_whole(tree, "drop.txt", 150), timeout=20, what="drop.txt archived whole"
    )
    assert len(daemon.find("file.held_open", file="drop.txt")) == 1
    assert daemon.stop() == 0


def test_a_writer_holding_the_file_in_working_delays_its_end(tree: Tree, start_daemon: Any) -> None:
    """Before a file leaves working/ it is probed again: a process that holds it
    open for writing there (opened before the claim, or through a path only
    dropline's user can reach) keeps it in working/ until it closes; then the
    fingerprint decides."""
    marker = tree.root / "go"
    tree.write_config(
        f"""
- name: waits
  match: "*.txt"
  stages:
    - name: wait-for-marker
      command: ["sh", "-c", "while [ ! -e {marker} ]; do sleep 0.02; done"]
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "kept.txt").write_bytes(b"kept\n")
    (tree.incoming / "changed.txt").write_bytes(b"changed\n")
    daemon.wait_event("stage.started", file="kept.txt")
    daemon.wait_event("stage.started", file="changed.txt")
    kept = os.open(tree.working / "kept.txt", os.O_WRONLY | os.O_APPEND)
    changed = os.open(tree.working / "changed.txt", os.O_WRONLY | os.O_APPEND)
    try:
        marker.touch()
        daemon.wait_event("file.held_open", file="kept.txt")
        daemon.wait_event("file.held_open", file="changed.txt")
        assert (tree.working / "kept.txt").exists() and not tree.archived()
        os.write(changed, b"written while held\n")
    finally:
        os.close(kept)
        os.close(changed)
    wait_until(lambda: "kept.txt" in tree.archived(), what="kept.txt archived once closed")
    assert tree.archived()["kept.txt"].read_bytes() == b"kept\n"
    wait_until(lambda: (tree.failed / "changed.txt").exists(), what="changed.txt failed")
    doc = json.loads((tree.failed / "changed.txt.error.json").read_text())
    assert "modified after it was claimed" in doc["error"]
    assert len(daemon.find("file.held_open", file="kept.txt")) == 1
    assert daemon.stop() == 0


def test_where_leases_are_refused_timing_decides_and_the_log_says_so_once(
    tree: Tree, start_daemon: Any
) -> None:
    """A filesystem that refuses leases (EINVAL): one warning, then close events
    and settle_time alone, as before the probe."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon(env={"DROPLINE_LEASE_REFUSE": "EINVAL"})
    daemon.wait_event("daemon.ready")
    for n in range(5):
        (tree.incoming / f"f{n}.txt").write_bytes(b"x" * n)
    wait_until(lambda: len(tree.archived()) == 5, what="all five archived")
    refused = daemon.find("lease.unavailable")
    assert len(refused) == 1
    assert "refuses leases (EINVAL)" in refused[0]["reason"]
    assert daemon.stop() == 0


def test_a_lease_refused_for_want_of_the_capability() -> None:
    """As a user that neither owns the file nor has CAP_LEASE (the daemon's user
    without the unit's capability): EACCES, so "cannot tell", and told why."""
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to act as two other users) and a system python3")
    daemon_dir = Path(__file__).resolve().parent.parent / "daemon"
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        Path(where).chmod(0o755)
        path = Path(where) / "theirs"
        path.write_bytes(b"x")
        os.chown(path, 4242, 4242)
        path.chmod(0o644)
        code = (
            "import os; from dropline.lease import LeaseProbe; told = []; "
            f"fd = os.open({str(path)!r}, os.O_RDONLY); "
            "p = LeaseProbe(told.append); "
            "assert p.held_open(fd) is None and p.held_open(fd) is None; print(told)"
        )
        as_another = ["setpriv", "--reuid=4343", "--regid=4343", "--clear-groups"]
        done = subprocess.run(
            [*as_another, "--inh-caps=-all", "/usr/bin/python3", "-c", code],
            env={"PYTHONPATH": str(daemon_dir), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '["not the file\'s owner and no CAP_LEASE (EACCES)"]'


def test_probe_answers_and_releases_at_once(tmp_path: Path) -> None:
    """The probe itself: no writer, False; a writer, True; no lease left behind."""
    assert catch_lease_breaks()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    told: list[str] = []
    probe = LeaseProbe(told.append)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert probe.held_open(fd) is False
        assert fcntl.fcntl(fd, 1025) == fcntl.F_UNLCK  # F_GETLEASE: none held
        writer = os.open(path, os.O_WRONLY)
        assert probe.held_open(fd) is True
        os.close(writer)
        assert probe.held_open(fd) is False
    finally:
        os.close(fd)
    assert not told and probe.refusals == 0


def test_probe_reports_each_refusal_once(tmp_path: Path) -> None:
    """A file of /proc refuses leases (EINVAL): None each time, told once."""
    told: list[str] = []
    probe = LeaseProbe(told.append)
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert probe.held_open(fd) is None
        assert probe.held_open(fd) is None
    finally:
        os.close(fd)
    assert probe.refusals == 2
    assert told == [f"the filesystem refuses leases ({errno.errorcode[errno.EINVAL]})"]


def test_lease_breaks_are_caught_by_a_handler_not_ignored() -> None:
    """SIGIO at its default would end the daemon; ignored (SIG_IGN), it would stay
    ignored in every program the stages run: a handler is neither."""
    code = (
        "import signal; from dropline.lease import catch_lease_breaks; "
        "assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL; "
        "assert catch_lease_breaks(); "
        "assert signal.getsignal(signal.SIGIO) not in (signal.SIG_DFL, signal.SIG_IGN)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "daemon"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_writer_that_kept_the_file_open_across_the_rename_is_found_at_the_hash(
    tree: Tree,
) -> None:
    """The claim's second look, on the file now in working/ (what a writer that
    opened it between the first probe and the rename would leave)."""
    path = tree.incoming / "late.txt"
    path.write_bytes(b"late\n")
    spool = Spool(tree.data, max_file_size=1 << 20)
    spool.settings.leases = LeaseProbe()
    try:
        entry = spool.incoming.inspect(b"late.txt")
        assert isinstance(entry, Entry)
        assert spool.incoming.held_open(entry) is False
        writer = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            assert spool.incoming.held_open(entry) is True
            os.rename(path, tree.working / "late.txt")
            with pytest.raises(HeldOpenError):
                spool.working.hash(b"late.txt", expect=entry)
            assert spool.working.held_open(b"late.txt") is True
        finally:
            os.close(writer)
        assert spool.working.held_open(b"late.txt") is False
        _, size, _ = spool.working.hash(b"late.txt", expect=entry)
        assert size == 5
    finally:
        spool.close()
