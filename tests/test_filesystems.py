"""Filesystems that are full, failing, or not the same as working/'s.

Each test mounts a small tmpfs of its own (root only; CI runs as root) and
unmounts it at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dropline.crashpoints import FAULTS

from .harness import DaemonProcess, StatusListener, Tree, crash_run, run_until_idle, wait_until

PIPELINES = """
- name: good
  match: "*.good"
  stages:
    - name: checksum
      builtin: sha256
- name: plain
  match: "*.txt"
"""

Mounter = Callable[[Path, str], None]


@pytest.fixture
def mount_tmpfs() -> Iterator[Mounter]:
    """mount_tmpfs(path, options): a tmpfs on PATH (mode 0750), unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},mode=0750", "dropline-test", str(path)],
            check=True,
        )
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _drop(tree: Tree, count: int, size: int = 2000) -> dict[str, bytes]:
    files = {f"f{i}.good": os.urandom(size + i) for i in range(count)}
    files |= {f"t{i}.txt": os.urandom(size // 2 + i) for i in range(count)}
    files["nobody.bin"] = b"no pipeline for me"
    for name, data in files.items():
        (tree.incoming / name).write_bytes(data)
    return files


def _assert_all_final(tree: Tree, files: dict[str, bytes]) -> None:
    final = tree.all_final()
    assert sorted(p.name for p in final) == sorted(files)
    for path in final:
        assert path.read_bytes() == files[path.name]
    assert (tree.failed / "nobody.bin.error.json").exists()
    assert not os.listdir(tree.incoming)
    assert not os.listdir(tree.working)
    hidden = [p for p in tree.archive.rglob(".*")] + [p for p in tree.failed.glob(".*")]
    assert not hidden, f"temporary files left behind: {hidden}"
    assert tree.query("PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize(
    "points",
    [
        (),
        ("finish.copied",),
        ("finish.copy_renamed",),
        ("finish.copied#3", "finish.copy_renamed#2"),
    ],
    ids=["clean", "copied", "copy_renamed", "twice"],
)
def test_archive_and_failed_on_other_filesystems(
    tree: Tree, mount_tmpfs: Mounter, points: tuple[str, ...]
) -> None:
    """Across filesystems files arrive by copy, fsync, rename, unlink; a kill loses nothing."""
    mount_tmpfs(tree.archive, "size=64m")
    mount_tmpfs(tree.failed, "size=16m")
    tree.write_config(PIPELINES, archive_layout="daily", min_free_space="1MiB")
    files = _drop(tree, 5)
    for point in points:
        crash_run(tree, point)
        # Never a half file under a final name (a hidden temporary copy may remain).
        for path in tree.all_final():
            if not path.name.startswith("."):
                assert path.read_bytes() == files[path.name], f"half file {path}"
    assert run_until_idle(tree) == 0
    _assert_all_final(tree, files)


def test_crash_points_across_filesystems_are_declared() -> None:
    """The copy steps are crash points of the protocol (so the tests above reach them)."""
    from dropline.crashpoints import POINTS

    assert {"finish.copied", "finish.copy_renamed"} <= set(POINTS)


def test_low_space_pauses_claiming_and_resumes(
    tree: Tree, mount_tmpfs: Mounter, start_daemon: Any
) -> None:
    """Below min_free_space claiming stops, STATUS and the log say so; freeing space resumes."""
    mount_tmpfs(tree.data, "size=8m")
    for sub in ("incoming", "working", "archive", "failed"):
        (tree.data / sub).mkdir(mode=0o750)
    tree.write_config(PIPELINES, min_free_space="2MiB")
    filler = tree.data / "filler"
    filler.write_bytes(b"\0" * (7 * 1024 * 1024))
    status = StatusListener(tree.root / "notify.sock")
    daemon = start_daemon(env={"NOTIFY_SOCKET": status.path})
    daemon.wait_event("daemon.ready")
    low = daemon.wait_event("disk.low")
    assert "min_free_space" in low["problem"] and str(tree.data) in low["problem"]
    files = _drop(tree, 3, size=500)
    # The loop has seen all 7 files arrive (inotify) and claims none while paused.
    wait_until(lambda: status.saw("PAUSED", "waiting 7"), timeout=10, what="paused, 7 waiting")
    assert not daemon.find("file.claimed")
    assert sorted(os.listdir(tree.incoming)) == sorted(files)
    status.close()
    filler.unlink()
    daemon.wait_event("disk.ok", timeout=10)
    wait_until(lambda: len(tree.all_final()) == len(files), timeout=20, what="all files ended")
    assert daemon.stop() == 0
    _assert_all_final(tree, files)


def test_status_says_paused_when_space_is_low(
    tree: Tree, mount_tmpfs: Mounter, start_daemon: Any
) -> None:
    """STATUS= carries the pause and its reason while the state's filesystem is low."""
    mount_tmpfs(tree.state_db.parent, "size=4m")
    tree.write_config(PIPELINES, min_free_space="1MiB")
    status = StatusListener(tree.root / "notify.sock")
    try:
        daemon = start_daemon(env={"NOTIFY_SOCKET": status.path})
        daemon.wait_event("daemon.ready")
        filler = tree.state_db.parent / "filler"
        filler.write_bytes(b"\0" * (3 * 1024 * 1024 + 512 * 1024))
        low = daemon.wait_event("disk.low", timeout=10)
        assert "the state directory" in low["problem"]
        (tree.incoming / "waiting.txt").write_bytes(b"wait for space")

        wait_until(
            lambda: status.saw("STATUS=PAUSED", "state directory"), timeout=10, what="PAUSED"
        )
        assert not daemon.find("file.claimed")
        filler.unlink()
        daemon.wait_event("disk.ok", timeout=10)
        wait_until(lambda: "waiting.txt" in tree.archived(), timeout=10, what="waiting.txt")
        assert daemon.stop() == 0
    finally:
        status.close()


def test_full_failed_folder_keeps_the_file_until_space_returns(
    tree: Tree, mount_tmpfs: Mounter, start_daemon: Any
) -> None:
    """ENOSPC writing NAME.error.json: the file waits in working/, then ends in failed/."""
    # Out of inodes, not bytes: the free-space check passes, the write itself fails.
    mount_tmpfs(tree.failed, "size=1m,nr_inodes=16")
    tree.write_config(PIPELINES, min_free_space="1KiB")
    fillers = []
    for i in range(64):
        try:
            (tree.failed / f".filler{i}").touch()
        except OSError:
            break
        fillers.append(tree.failed / f".filler{i}")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "nobody.bin").write_bytes(b"no pipeline for me")
    full = daemon.wait_event("disk.full", timeout=10)
    assert "No space left" in full["error"] or "no space" in full["error"].lower()
    assert os.listdir(tree.working) == ["nobody.bin"]
    assert daemon.proc.poll() is None
    for filler in fillers:
        filler.unlink()
    wait_until(lambda: (tree.failed / "nobody.bin").exists(), timeout=10, what="failed/")
    assert (tree.failed / "nobody.bin.error.json").exists()
    assert daemon.stop() == 0
    assert not os.listdir(tree.working)


@pytest.mark.parametrize("fault", FAULTS)
def test_io_error_is_fatal_and_loses_nothing(tree: Tree, fault: str) -> None:
    """An EIO on fsync, write or commit makes the daemon exit 1; a restart loses nothing."""
    tree.write_config(PIPELINES)
    files = _drop(tree, 4)
    proc = DaemonProcess(tree, args=("--exit-when-idle",), env={"DROPLINE_FAULT": fault})
    try:
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code == 1, proc.text()
    failed = [e for e in proc.events() if e.get("event") == "daemon.failed"]
    assert failed and "injected fault" in failed[0]["error"], proc.text()
    assert "fatal" in proc.text()
    assert run_until_idle(tree) == 0
    _assert_all_final(tree, files)
