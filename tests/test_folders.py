"""Folders dropped into incoming/: their files processed where they lie, kept in
their place under archive/ and failed/, emptied folders removed; or, with
``recursive: false``, the folder refused at once.  Never through a symlink."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import Tree, cli_json, crash_run, run_cli, run_until_idle, wait_until
from .rewrites import delay_env

PASSTHROUGH = """
- name: all
  match: "*"
"""

# A file whose name says "bad" fails at once (exit 65); the others pass.
PICKY = """
- name: picky
  match: "*"
  stages:
    - name: judge
      command: ["sh", "-c", "case \\"$DROPLINE_PATH\\" in *bad*) exit 65;; esac"]
"""


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _archived(tree: Tree) -> dict[str, bytes]:
    """Everything under archive/ (flat layout in these tests), by relative path."""
    return {
        str(p.relative_to(tree.archive)): p.read_bytes()
        for p in tree.archive.rglob("*")
        if p.is_file()
    }


def test_files_in_nested_folders_keep_their_place(tree: Tree, start_daemon: Any) -> None:
    """mkdir -p and writes in place, at three depths, with one base name in each:
    every file archived once, byte-identical, under its relative path; the
    emptied folders go once quiet; a folder's own file names route as any other."""
    tree.write_config(
        PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="1s", settle_time="0.3s"
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    files = {
        "a.csv": b"top\n",
        "batch/a.csv": b"one level\n",
        "batch/deep/a.csv": b"two levels\n",
        "batch/deep/b.csv": b"another\n",
        "other/x.txt": b"x\n",
    }
    for name, data in files.items():
        _write(tree.incoming / name, data)
    wait_until(lambda: _archived(tree) == files, timeout=20, what="every file archived")
    assert daemon.find("folder.found", file="batch")
    wait_until(lambda: not os.listdir(tree.incoming), timeout=10, what="emptied folders removed")
    # Logged right after the rmdir: the log line may come a moment after.
    wait_until(
        lambda: {e["file"] for e in daemon.find("folder.removed")} == {"batch", "other"},
        timeout=5,
        what="folder.removed for each folder",
    )
    assert os.listdir(tree.working) == []
    names = {r[0] for r in tree.query("SELECT name FROM items WHERE state = 'archived'")}
    assert names == {n.encode() for n in files}
    assert daemon.stop() == 0


def test_a_folder_moved_in_is_processed(tree: Tree, start_daemon: Any) -> None:
    """A folder made elsewhere and renamed into incoming/ (IN_MOVED_TO of a folder),
    long before any rescan: its files are found and archived."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="never")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    staged = tree.root / "staged"
    files = {f"delivery/part-{i}.dat": f"part {i}\n".encode() for i in range(5)}
    for name, data in files.items():
        _write(staged / name, data)
    os.rename(staged / "delivery", tree.incoming / "delivery")
    wait_until(lambda: _archived(tree) == files, timeout=15, what="the moved-in folder's files")
    # "never": the emptied folder stays, and status counts nothing waiting in it.
    assert (tree.incoming / "delivery").is_dir()
    doc = cli_json(tree, "status", schema="status")
    assert doc["counts"]["incoming"] == 0 and doc["refused"]["count"] == 0
    assert daemon.stop() == 0


def test_a_failed_file_keeps_its_folder_with_its_reason_and_retries_there(
    tree: Tree, start_daemon: Any
) -> None:
    """failed/batch/bad.csv with failed/batch/bad.csv.error.json beside it; retried,
    it goes through again and is archived as archive/batch/bad.csv."""
    tree.write_config(PICKY, rescan_interval="1h", remove_empty_folders_after="1s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _write(tree.incoming / "batch" / "bad.csv", b"bad\n")
    _write(tree.incoming / "batch" / "good.csv", b"good\n")
    failed = tree.failed / "batch" / "bad.csv"
    wait_until(failed.exists, timeout=15, what="failed/batch/bad.csv")
    assert (tree.failed / "batch" / "bad.csv.error.json").is_file()
    wait_until(lambda: (tree.archive / "batch" / "good.csv").exists(), timeout=10, what="good")
    # The downstream is mended: a passthrough configuration, reloaded; then retried.
    tree.write_config(PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="1s")
    assert run_cli("reload", "--config", str(tree.config)).returncode == 0
    item = tree.query("SELECT id FROM items WHERE state = 'failed'")[0][0]
    cli_json(tree, "retry", item, schema="retry")
    wait_until(
        lambda: (tree.archive / "batch" / "bad.csv").exists(), timeout=15, what="retried file"
    )
    assert (tree.archive / "batch" / "bad.csv").read_bytes() == b"bad\n"
    assert not failed.exists() and not (tree.failed / "batch" / "bad.csv.error.json").exists()
    assert daemon.stop() == 0


def test_recursive_off_refuses_a_folder_at_once(tree: Tree, start_daemon: Any) -> None:
    """recursive: false: a folder made in incoming/ is refused at its creation (not at
    a rescan an hour away), left as it is, and shown by status as refused, not waiting."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h", recursive=False)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _write(tree.incoming / "box" / "inside.csv", b"inside\n")
    refused = daemon.wait_event("entry.refused", file="box")
    assert "recursive is off" in refused["reason"]
    (tree.incoming / "plain.csv").write_bytes(b"plain\n")
    wait_until(lambda: (tree.archive / "plain.csv").exists(), timeout=10, what="plain.csv")
    assert (tree.incoming / "box" / "inside.csv").read_bytes() == b"inside\n"
    doc = cli_json(tree, "status", schema="status")
    assert doc["counts"]["incoming"] == 0
    assert doc["refused"]["count"] == 1
    assert doc["refused"]["shown"][0]["file"] == "box"
    text = run_cli("status", "--config", str(tree.config)).stdout
    assert "Refused:" in text and "recursive is off" in text
    assert len(daemon.find("entry.refused", file="box")) == 1
    assert daemon.stop() == 0


def test_symlinks_and_fifos_in_and_around_folders_are_never_followed(
    tree: Tree, start_daemon: Any
) -> None:
    """A symlink to a folder outside, a symlink and a FIFO inside a dropped folder:
    refused, never followed or opened; the real files beside them are archived;
    the folder holding refused entries is not removed."""
    outside = tree.root / "outside"
    _write(outside / "secret.csv", b"secret\n")
    tree.write_config(PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="0s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    os.symlink(outside, tree.incoming / "linked")
    # The folder arrives whole, moved in as mv does: made empty in incoming/, it
    # would be removed at once (remove_empty_folders_after: 0s) before its entries.
    staged = tree.root / "staging" / "batch"
    staged.mkdir(parents=True)
    os.symlink(outside / "secret.csv", staged / "secret.csv")
    os.mkfifo(staged / "pipe.csv")
    os.symlink(outside, staged / "sublink")
    (staged / "real.csv").write_bytes(b"real\n")
    folder = tree.incoming / "batch"
    os.rename(staged, folder)
    wait_until(lambda: (tree.archive / "batch" / "real.csv").exists(), timeout=15, what="real")
    for name in ("batch/secret.csv", "batch/pipe.csv", "batch/sublink"):
        daemon.wait_event("entry.refused", file=name)
    assert (outside / "secret.csv").read_bytes() == b"secret\n"
    assert _archived(tree) == {"batch/real.csv": b"real\n"}
    doc = cli_json(tree, "status", schema="status")
    shown = {r["file"] for r in doc["refused"]["shown"]}
    assert {"linked", "batch/secret.csv", "batch/pipe.csv", "batch/sublink"} <= shown
    assert stat.S_ISFIFO(os.lstat(folder / "pipe.csv").st_mode)
    assert folder.is_dir()
    assert daemon.stop() == 0


def test_hidden_folders_are_left_to_their_writer(tree: Tree, start_daemon: Any) -> None:
    """rsync's --partial-dir and other hidden folders: nothing inside is taken, the
    folder stays; a temporary-named folder likewise."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="0s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _write(tree.incoming / ".rsync-partial" / "big.bin", b"partial")
    _write(tree.incoming / "upload.part" / "x.csv", b"x")
    (tree.incoming / "after.csv").write_bytes(b"after\n")
    wait_until(lambda: (tree.archive / "after.csv").exists(), timeout=10, what="after.csv")
    assert (tree.incoming / ".rsync-partial" / "big.bin").read_bytes() == b"partial"
    assert (tree.incoming / "upload.part" / "x.csv").exists()
    assert not daemon.find("folder.found")
    assert daemon.stop() == 0


def test_a_writer_pausing_between_files_keeps_its_folder(tree: Tree, start_daemon: Any) -> None:
    """The folder is emptied by the first claim; the writer's second file, written
    within remove_empty_folders_after, still finds its folder there."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h", remove_empty_folders_after="30s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    _write(tree.incoming / "slow" / "first.csv", b"1\n")
    wait_until(lambda: (tree.archive / "slow" / "first.csv").exists(), timeout=10, what="first")
    (tree.incoming / "slow" / "second.csv").write_bytes(b"2\n")  # no mkdir: it must be there
    wait_until(lambda: (tree.archive / "slow" / "second.csv").exists(), timeout=10, what="second")
    assert not daemon.find("folder.removed")
    assert daemon.stop() == 0


@pytest.mark.parametrize("point", ["claim.renamed", "claim.synced", "finish.renamed"])
def test_crash_while_moving_a_file_of_a_folder_loses_nothing(tree: Tree, point: str) -> None:
    """SIGKILL in the middle of a claim from a sub-folder or of its move to
    archive/SUB/: the next run ends each file once, in its place."""
    tree.write_config(PASSTHROUGH, remove_empty_folders_after="0s")
    files = {f"batch/f{i}.dat": f"{i}\n".encode() for i in range(6)}
    files["batch/deep/g.dat"] = b"g\n"
    for name, data in files.items():
        _write(tree.incoming / name, data)
    old = time.time() - 60  # found by the start's scan: settled already
    for name in files:
        os.utime(tree.incoming / name, (old, old))
    crash_run(tree, point)
    assert run_until_idle(tree) == 0
    assert _archived(tree) == files
    assert os.listdir(tree.working) == []
    rows = tree.query("SELECT state, COUNT(*) FROM items GROUP BY state")
    assert rows == [("archived", len(files))]


def test_a_file_held_open_waits_in_its_folder(tree: Tree, start_daemon: Any) -> None:
    """A file in a folder that its writer holds open looks settled (old mtime): the
    lease probe sees the writer; the file waits where it is and is claimed whole
    once closed."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    path = tree.incoming / "open" / "held.csv"
    path.parent.mkdir()
    with path.open("wb") as f:
        f.write(b"first half\n")
        f.flush()
        old = time.time() - 60
        os.utime(path, (old, old))
        daemon.wait_event("file.held_open", file="open/held.csv")
        assert path.exists()
        f.write(b"second half\n")
    wait_until(lambda: (tree.archive / "open" / "held.csv").exists(), timeout=10, what="held.csv")
    assert (tree.archive / "open" / "held.csv").read_bytes() == b"first half\nsecond half\n"
    assert daemon.stop() == 0


def test_a_file_put_back_goes_back_into_its_folder(tree: Tree, start_daemon: Any) -> None:
    """Where leases are refused: claimed while its writer still wrote (the window held
    open after the claim's renames), the file goes back into its folder, not into
    incoming/ itself, and is claimed again, whole, once settled."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon(env=delay_env(tree))
    daemon.wait_event("daemon.ready")
    path = tree.incoming / "open" / "slow.txt"
    path.parent.mkdir()
    with path.open("wb") as writer:
        writer.write(b"begun\n")
        writer.flush()
        wait_until(
            lambda: (tree.working / "slow.txt").exists() or daemon.proc.poll() is not None,
            timeout=10,
            what="working/slow.txt",
        )
        writer.write(b"ended\n")
    (tree.root / "go").touch()
    daemon.wait_event("file.busy", file="open/slow.txt")
    final = tree.archive / "open" / "slow.txt"
    wait_until(final.exists, timeout=10, what="archive/open/slow.txt")
    assert final.read_bytes() == b"begun\nended\n"
    assert not (tree.incoming / "slow.txt").exists() and not os.listdir(tree.working)
    assert daemon.stop() == 0


def test_status_counts_the_files_inside_folders(tree: Tree) -> None:
    """With no daemon running: files inside folders are waiting, a FIFO inside is refused."""
    tree.write_config(PASSTHROUGH)
    assert run_until_idle(tree) == 0  # its state database, before anything is dropped
    for i in range(3):
        _write(tree.incoming / "batch" / f"f{i}.csv", b"x")
    _write(tree.incoming / "batch" / ".hidden", b"x")
    os.mkfifo(tree.incoming / "batch" / "pipe")
    (tree.incoming / "top.csv").write_bytes(b"x")
    doc = cli_json(tree, "status", schema="status")
    assert doc["counts"]["incoming"] == 4
    assert [r["file"] for r in doc["refused"]["shown"]] == ["batch/pipe"]
    shutil.rmtree(tree.incoming / "batch")


def test_prune_removes_the_empty_folders_of_a_past_day(tree: Tree) -> None:
    """A past day's folder holding only the empty folders its files kept goes with it;
    one still holding a file stays."""
    tree.write_config(PASSTHROUGH)
    assert run_until_idle(tree) == 0
    (tree.archive / "2020-01-01" / "batch" / "deep").mkdir(parents=True)
    _write(tree.archive / "2020-01-02" / "batch" / "kept.csv", b"unknown to dropline\n")
    result = run_cli("prune", "--older-than", "1d", "--config", str(tree.config))
    assert result.returncode == 0, result.stderr
    assert not (tree.archive / "2020-01-01").exists()
    assert (tree.archive / "2020-01-02" / "batch" / "kept.csv").exists()
