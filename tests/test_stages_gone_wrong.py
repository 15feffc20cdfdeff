"""Stages gone wrong: hangs, runaway memory, floods of output, exceptions.

None of them may stop the other files, grow the daemon's memory, or end up
unbounded in the log or in NAME.error.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .harness import Tree, wait_until

STAGES = """
import time

from dropline.errors import PermanentError


def hang(ctx):
    time.sleep(3600)


def hog(ctx):
    chunks = []
    while True:
        chunks.append(bytearray(16 * 1024 * 1024))


def shout(ctx):
    for _ in range(100_000):
        print("x" * 60)
    raise RuntimeError("shouted and failed")


def fine(ctx):
    return {"ok": True}
"""


LOUD_COMMAND = """
- name: loud-command
  match: "*.loud"
  stages:
    - name: flood
      command: ["sh", "-c", "yes 0123456789abcdef0123456789 | head -c 5000000; exit 3"]
      retries: 0
"""


def _setup(tree: Tree, stage: str, extra: str = "", **stage_options: Any) -> None:
    folder = tree.root / "pipelines" / "bad"
    folder.mkdir(parents=True)
    (folder / "badstages.py").write_text(STAGES)
    options = "".join(f"\n      {k}: {v}" for k, v in stage_options.items())
    tree.write_config(
        f"""
- name: bad
  match: "*.bad"
  stages:
    - name: {stage}
      python: "badstages:{stage}"
      retries: 0{options}
- name: good
  match: "*.good"
  stages:
    - name: fine
      python: "badstages:fine"
"""
        + extra,
        pipelines_dir=str(tree.root / "pipelines"),
    )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _error(tree: Tree, name: str) -> str:
    return str(json.loads((tree.failed / f"{name}.error.json").read_text())["error"])


def test_hanging_python_stage_is_killed_at_its_timeout(tree: Tree, start_daemon: Any) -> None:
    """A Python stage that hangs is killed at its timeout while other files flow past it."""
    # 3 s: the good files' own worker processes start meanwhile, even on a loaded machine.
    _setup(tree, "hang", timeout="3s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "stuck.bad").write_bytes(b"x")
    daemon.wait_event("stage.started", file="stuck.bad")
    for i in range(10):
        (tree.incoming / f"f{i}.good").write_bytes(b"y")
    wait_until(lambda: len(tree.archived()) == 10, timeout=10, what="good files archived")
    assert not (tree.failed / "stuck.bad").exists(), "the good files did not wait for it"
    wait_until(lambda: (tree.failed / "stuck.bad").exists(), timeout=10, what="stuck.bad failed")
    assert "timed out after 3 s (worker process killed)" in _error(tree, "stuck.bad")
    assert daemon.stop() == 0


def test_runaway_allocation_fails_the_file_not_the_daemon(tree: Tree, start_daemon: Any) -> None:
    """A stage allocating without bound hits memory_limit in its worker; the daemon stays small."""
    _setup(tree, "hog", memory_limit="300MiB", timeout="30s")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "greedy.bad").write_bytes(b"x")
    (tree.incoming / "after.good").write_bytes(b"y")
    wait_until(lambda: (tree.failed / "greedy.bad").exists(), timeout=20, what="greedy.bad failed")
    assert "MemoryError" in _error(tree, "greedy.bad")
    wait_until(lambda: "after.good" in tree.archived(), timeout=10, what="after.good")
    assert daemon.proc.poll() is None
    assert _rss_kib(daemon.proc.pid) < 150 * 1024, "the daemon itself grew"
    assert daemon.stop() == 0


def test_flood_of_output_is_capped(tree: Tree, start_daemon: Any) -> None:
    """Megabytes printed by a failing stage reach error.json and the log only as a short tail."""
    _setup(tree, "shout", extra=LOUD_COMMAND)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "noisy.bad").write_bytes(b"x")
    (tree.incoming / "noisy.loud").write_bytes(b"x")
    wait_until(
        lambda: (tree.failed / "noisy.bad").exists() and (tree.failed / "noisy.loud").exists(),
        timeout=20,
        what="both noisy files failed",
    )
    python_error = _error(tree, "noisy.bad")
    assert "shouted and failed" in python_error
    assert "bytes omitted" in python_error and len(python_error) < 10_000
    command_error = _error(tree, "noisy.loud")
    assert "exit status 3" in command_error and len(command_error) < 10_000
    assert daemon.stop() == 0
    assert max(len(line) for line in daemon.text().splitlines()) < 20_000


def test_hanging_thread_stage_is_abandoned(tree: Tree, start_daemon: Any) -> None:
    """With isolation: thread a hung stage cannot be killed: it is abandoned and others go on."""
    _setup(tree, "hang", timeout="0.5s", isolation="thread")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "stuck.bad").write_bytes(b"x")
    wait_until(lambda: (tree.failed / "stuck.bad").exists(), timeout=10, what="stuck.bad failed")
    assert "abandoned" in _error(tree, "stuck.bad")
    for i in range(8):  # more files than worker threads: the pool replaced the stuck one
        (tree.incoming / f"f{i}.good").write_bytes(b"y")
    wait_until(lambda: len(tree.archived()) == 8, timeout=10, what="good files archived")
    assert daemon.proc.poll() is None
