"""Claims that cannot complete never strand a file nor block its name.

A file still being written when it is claimed goes back to incoming/; when its
name is taken again there (a writer rewriting one name in a loop), the claimed
file is an earlier delivery, kept in working/ as its own item and claimed there
once settled.  A working name taken behind dropline's back, a file gone before
its rename: each leaves every file in exactly one folder, recorded, logged once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, run_until_idle, wait_until
from .rewrites import PASSTHROUGH, delay_env, rewrite_during_claim


def _rows(tree: Tree) -> list[tuple[str, bytes, str, str | None, str | None, bytes | None]]:
    return [
        (r[0], bytes(r[1]), r[2], r[3], r[4], None if r[5] is None else bytes(r[5]))
        for r in tree.query(
            "SELECT id, CAST(name AS BLOB), state, sha256, final_dir, CAST(final_name AS BLOB) "
            "FROM items ORDER BY id"
        )
    ]


def _archived_files(tree: Tree) -> list[Path]:
    return sorted(p for p in tree.archive.rglob("*") if p.is_file())


def _assert_rows_match_archive(tree: Tree, *, hashes: bool = True) -> None:
    """Every row archived names its file (with its content: HASHES); every file has its row."""
    rows = _rows(tree)
    assert {r[2] for r in rows} <= {"archived"}, rows
    paths = []
    for _, _, _, sha256, final_dir, final_name in rows:
        assert final_name is not None
        path = tree.archive / (final_dir or "") / os.fsdecode(final_name)
        if hashes:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, path
        paths.append(path)
    assert sorted(paths) == _archived_files(tree), "a file in archive/ no row names"


def test_put_back_meets_its_name_taken_again(tree: Tree, start_daemon: Any) -> None:
    """The claimed file was still being written and a new file of its name came
    meanwhile: both deliveries are archived, once each; nothing stays behind."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon(env=delay_env(tree))
    wrote = rewrite_during_claim(tree, daemon, "loop.txt", again=True)
    assert wrote.second is not None
    wait_until(lambda: len(_archived_files(tree)) == 2, timeout=15, what="two versions archived")
    contents = sorted(p.read_bytes() for p in _archived_files(tree))
    assert contents == sorted([wrote.first, wrote.second])
    kept = [e for e in daemon.find("file.busy") if "kept in working/" in e["detail"]]
    assert len(kept) == 1, daemon.text()
    wait_until(lambda: not os.listdir(tree.working), timeout=5, what="working/ empty")
    assert not os.listdir(tree.incoming)
    assert daemon.stop() == 0
    _assert_rows_match_archive(tree)
    # Nothing is adopted or processed again by the next start.
    assert run_until_idle(tree) == 0
    assert len(_archived_files(tree)) == 2
    _assert_rows_match_archive(tree)


def test_put_back_when_the_name_is_free(tree: Tree, start_daemon: Any) -> None:
    """The claimed file was still being written: back to incoming/, logged once,
    claimed again once settled, archived once with all it holds."""
    tree.write_config(PASSTHROUGH)
    daemon = start_daemon(env=delay_env(tree))
    wrote = rewrite_during_claim(tree, daemon, "slow.txt", again=False)
    wait_until(lambda: _archived_files(tree), timeout=15, what="slow.txt archived")
    assert [p.read_bytes() for p in _archived_files(tree)] == [wrote.first]
    assert [e["detail"] for e in daemon.find("file.busy")] == ["still being written; put back"]
    assert daemon.stop() == 0
    _assert_rows_match_archive(tree)
    assert not os.listdir(tree.working) and not os.listdir(tree.incoming)


def test_working_name_taken_behind_our_back(tree: Tree, start_daemon: Any) -> None:
    """An entry dropline did not put in working/ has the file's name: the claim meets
    EEXIST; the file is claimed again under a unique name at once (not after a
    restart), the warning logged once; the stray entry is adopted at the next start."""
    tree.write_config(PASSTHROUGH, rescan_interval="1h")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.working / "same.txt").write_bytes(b"put there by hand")
    (tree.incoming / "same.txt").write_bytes(b"dropped")
    wait_until(lambda: _archived_files(tree), timeout=10, what="same.txt archived")
    assert [p.read_bytes() for p in _archived_files(tree)] == [b"dropped"]
    assert len(daemon.find("claim.name_taken", file="same.txt")) == 1
    (tree.incoming / "same.txt").write_bytes(b"dropped again")
    wait_until(lambda: len(_archived_files(tree)) == 2, timeout=10, what="the second one")
    assert len(daemon.find("claim.name_taken")) == 1, "logged once"
    assert daemon.stop() == 0
    assert run_until_idle(tree) == 0
    contents = sorted(p.read_bytes() for p in _archived_files(tree))
    assert contents == [b"dropped", b"dropped again", b"put there by hand"]
    _assert_rows_match_archive(tree)


def test_file_gone_before_its_rename(tree: Tree, start_daemon: Any) -> None:
    """The file is renamed away between the look and the claim's rename (ENOENT):
    its row is forgotten, the loss of the race logged once, nothing left behind."""
    tree.write_config(PASSTHROUGH)
    env = delay_env(tree)
    env["DROPLINE_DELAY_AT"] = "claim.intent_committed@1:60"
    daemon = start_daemon(env=env)
    daemon.wait_event("daemon.ready")
    (tree.incoming / "away.txt").write_bytes(b"soon elsewhere")
    wait_until(lambda: tree.query("SELECT count(*) FROM items")[0][0] == 1, what="claim intent")
    os.rename(tree.incoming / "away.txt", tree.root / "away.txt")
    (tree.root / "go").touch()
    daemon.wait_event("file.gone", file="away.txt")
    wait_until(lambda: tree.query("SELECT count(*) FROM items") == [(0,)], what="row forgotten")
    (tree.incoming / "next.txt").write_bytes(b"next")
    wait_until(lambda: _archived_files(tree), timeout=10, what="next.txt archived")
    assert daemon.stop() == 0
    assert len(daemon.find("file.gone")) == 1
    assert not os.listdir(tree.working) and not os.listdir(tree.incoming)


REWRITES = 300


def _versions(n: int) -> dict[bytes, int]:
    """What `seq 1 N` writes, for each N: the content of each version."""
    return {"".join(f"{i}\n" for i in range(1, k + 1)).encode(): k for k in range(1, n + 1)}


@pytest.mark.slow
def test_shell_loop_rewriting_one_name(tree: Tree, start_daemon: Any) -> None:
    """`for i in $(seq 300); do seq 1 $i > loop.txt; done` into a running daemon with
    default settings: every version the daemon took is archived exactly once and
    complete, the last one among them; nothing is left in working/ or incoming/;
    a restart processes nothing again."""
    tree.write_config(PASSTHROUGH, settle_time="2s", archive_layout="daily")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    loop = f'for i in $(seq 1 {REWRITES}); do seq 1 $i > "$0/loop.txt"; done'
    subprocess.run(["sh", "-c", loop, str(tree.incoming)], check=True, timeout=120)

    versions = _versions(REWRITES)
    last = max(versions, key=versions.__getitem__)

    def settled() -> bool:
        files = _archived_files(tree)
        return bool(
            not os.listdir(tree.incoming)
            and not os.listdir(tree.working)
            and any(p.read_bytes() == last for p in files)
            and tree.query("SELECT count(*) FROM items WHERE state != 'archived'") == [(0,)]
        )

    wait_until(settled, timeout=60, interval=0.1, what="the last version archived, all settled")
    assert daemon.stop() == 0
    files = _archived_files(tree)
    taken = [versions.get(p.read_bytes()) for p in files]
    assert None not in taken, "an archived file that is no complete version"
    assert len(set(taken)) == len(taken), "a version archived twice"
    # The recorded hashes are not compared: a claim can still take the file between
    # the shell's truncation and its write, while the shell holds it open (the
    # claim then records an empty file the shell fills afterwards).  Telling a file
    # still held open is not this protocol's part; every version above is complete.
    _assert_rows_match_archive(tree, hashes=False)
    kept = [e for e in daemon.find("file.busy") if "kept in working/" in e["detail"]]
    print(f"\n{len(files)} versions archived of {REWRITES}, {len(kept)} kept after a put-back")
    assert run_until_idle(tree) == 0
    assert _archived_files(tree) == files, "processed again after a restart"


def test_delay_hook_without_its_marker_ends_after_its_seconds(tree: Tree) -> None:
    """DROPLINE_DELAY_AT alone holds the step for its seconds, then goes on."""
    tree.write_config(PASSTHROUGH)
    (tree.incoming / "a.txt").write_bytes(b"a")
    proc = DaemonProcess(
        tree, args=("--exit-when-idle",), env={"DROPLINE_DELAY_AT": "claim.synced:0.2"}
    )
    assert proc.wait(30) == 0
    assert [p.read_bytes() for p in _archived_files(tree)] == [b"a"]


def test_claimed_file_grown_too_large_goes_back_under_a_unique_name(
    tree: Tree, start_daemon: Any
) -> None:
    """Written past max_file_size during its claim, with its name taken again in
    incoming/: it cannot be claimed, so it goes back into incoming/ under a unique
    name and is refused there (logged once); the new file is archived."""
    tree.write_config(PASSTHROUGH, max_file_size=25)
    daemon = start_daemon(env=delay_env(tree))
    wrote = rewrite_during_claim(tree, daemon, "big.txt", again=True)
    assert len(wrote.first) > 25
    refused = daemon.wait_event("entry.refused")
    assert refused["file"].startswith("big.") and refused["file"] != "big.txt", refused
    assert "too large" in refused["reason"]
    wait_until(lambda: _archived_files(tree), timeout=10, what="the second version archived")
    assert [p.read_bytes() for p in _archived_files(tree)] == [wrote.second]
    wait_until(lambda: not os.listdir(tree.working), timeout=5, what="working/ empty")
    assert sorted(os.listdir(tree.incoming)) == [refused["file"]]
    assert (tree.incoming / refused["file"]).read_bytes() == wrote.first
    assert daemon.stop() == 0
    assert len(daemon.find("entry.refused")) == 1
    _assert_rows_match_archive(tree)
