"""Bursts and slow writers against a real daemon and real inotify."""

from __future__ import annotations

import collections
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import Tree, run_until_idle, wait_until

PASSTHROUGH = """
- name: all
  match: "*"
"""

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
# make test drops a burst of 5,000; make soak (DROPLINE_SOAK=long) one of 20,000.
BURST = 20_000 if os.environ.get("DROPLINE_SOAK", "") == "long" else 5_000


def _payload(i: int) -> bytes:
    return f"file {i}\n".encode() * (1 + i % 7) + hashlib.sha256(str(i).encode()).digest()


def _drop_burst(tree: Tree, count: int) -> dict[str, bytes]:
    """Half written in place, half written under a .tmp name and renamed in."""
    files: dict[str, bytes] = {}
    incoming = str(tree.incoming)
    for i in range(count):
        data = _payload(i)
        if i % 2:
            name = f"inplace-{i}.dat"
            fd = os.open(f"{incoming}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
        else:
            name = f"renamed-{i}.dat"
            tmp = f"{incoming}/{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.rename(tmp, f"{incoming}/{name}")
        files[name] = data
    return files


def _assert_archived_once(tree: Tree, files: dict[str, bytes], daemon: Any) -> None:
    archived = list(tree.archive.iterdir())
    assert len(archived) == len(files), "every file archived exactly once"
    for path in archived:
        assert path.read_bytes() == files[path.name]
    claimed = collections.Counter(e["file"] for e in daemon.find("file.claimed"))
    assert not [n for n, c in claimed.items() if c > 1], "no file claimed twice"
    assert not [n for n in claimed if n.endswith(".tmp")], "no temporary name claimed"
    rows = tree.query("SELECT count(*), count(DISTINCT name) FROM items WHERE state='archived'")
    assert rows == [(len(files), len(files))]
    tmp_rows = tree.query("SELECT count(*) FROM items WHERE CAST(name AS TEXT) LIKE '%.tmp'")
    assert tmp_rows == [(0,)]


@pytest.mark.slow
def test_burst_of_files(tree: Tree, start_daemon: Any) -> None:
    """A burst of files dropped as fast as possible: all archived byte-identical, none twice."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    started = time.monotonic()
    files = _drop_burst(tree, BURST)
    wait_until(
        lambda: len(os.listdir(tree.archive)) >= len(files),
        timeout=180,
        interval=0.2,
        what=f"{BURST:,} files archived",
    )
    elapsed = time.monotonic() - started
    assert daemon.stop() == 0
    _assert_archived_once(tree, files, daemon)
    assert not os.listdir(tree.incoming)
    assert not os.listdir(tree.working)
    print(f"{BURST:,} files in {elapsed:.1f} s ({len(files) / elapsed:.0f} files/s)")


@pytest.mark.serial  # lowers a limit of the whole machine for a moment
def test_overflowed_inotify_queue_loses_nothing(tree: Tree, start_daemon: Any) -> None:
    """With max_queued_events lowered to 64 the queue overflows; a rescan finds every file."""
    if not os.access(MAX_QUEUED, os.W_OK):
        pytest.skip(f"{MAX_QUEUED} is not writable here (needs root)")
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    original = MAX_QUEUED.read_text()
    try:
        # The limit applies to inotify instances created while it is in force.
        MAX_QUEUED.write_text("64\n")
        daemon = start_daemon()
        daemon.wait_event("daemon.ready")
    finally:
        MAX_QUEUED.write_text(original)
    # Freeze the daemon so the kernel queue must overflow while the burst lands.
    daemon.signal(19)  # SIGSTOP
    try:
        files = _drop_burst(tree, 3000)
    finally:
        daemon.signal(18)  # SIGCONT
    daemon.wait_event("scan.overflow", timeout=30)
    wait_until(
        lambda: len(os.listdir(tree.archive)) >= len(files),
        timeout=120,
        interval=0.1,
        what="every file archived after the overflow",
    )
    # The watch is alive after the overflow: a new file is seen at once, not by the
    # periodic rescan (an hour away) or a scan of the overflow (already done).
    scans = len(daemon.find("scan.started"))
    started = time.monotonic()
    (tree.incoming / "late.dat").write_bytes(b"late")
    wait_until(lambda: (tree.archive / "late.dat").exists(), timeout=10, what="late.dat")
    assert time.monotonic() - started < 5
    assert len(daemon.find("scan.started")) == scans
    assert not daemon.find("watch.failed")
    assert daemon.stop() == 0
    files["late.dat"] = b"late"
    _assert_archived_once(tree, files, daemon)


def test_slow_writer_is_archived_complete(tree: Tree, start_daemon: Any) -> None:
    """A 1 MiB file written in chunks over about 3 s is claimed only once complete."""
    # Frequent rescans: the scan path must respect the settle time while the writer pauses.
    tree.write_config(PASSTHROUGH, settle_time="1s", rescan_interval="0.2s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    data = os.urandom(1 << 20)
    chunk = 64 * 1024
    with (tree.incoming / "slow.bin").open("wb") as f:
        for offset in range(0, len(data), chunk):
            f.write(data[offset : offset + chunk])
            f.flush()
            time.sleep(0.18)  # the writer's pace, not a synchronisation
            assert not (tree.archive / "slow.bin").exists(), "claimed while still written"
    wait_until(lambda: (tree.archive / "slow.bin").exists(), timeout=10, what="slow.bin")
    assert (tree.archive / "slow.bin").read_bytes() == data
    assert len(daemon.find("file.claimed", file="slow.bin")) == 1
    assert daemon.stop() == 0


def test_big_files_are_claimed_a_few_at_a_time(tree: Tree) -> None:
    """The loop reads and hashes a claim batch at once, so a batch holds about 64 MiB:
    a backlog of twelve 40 MiB files (sparse: no disk is used) is claimed two at a
    time, and every file is archived with its size and SHA-256."""
    tree.write_config(PASSTHROUGH, settle_time="0s", archive_layout="flat")
    size = 40 << 20
    for i in range(12):
        with open(tree.incoming / f"big-{i:02d}.dat", "wb") as f:
            f.truncate(size)
    assert run_until_idle(tree) == 0
    assert sorted(p.name for p in tree.archive.iterdir()) == [f"big-{i:02d}.dat" for i in range(12)]
    zeros = hashlib.sha256(bytes(size)).hexdigest()
    rows = tree.query("SELECT created_at, size, sha256 FROM items WHERE state = 'archived'")
    assert len(rows) == 12
    assert {(s, h) for _, s, h in rows} == {(size, zeros)}
    # Rows of one claim batch share its time, and so do the batches planned in one
    # pass (two, the mover having one queued): two 40 MiB files reach 64 MiB.
    passes = collections.Counter(created for created, _, _ in rows)
    assert len(passes) >= 3, passes
    assert max(passes.values()) <= 4, passes
