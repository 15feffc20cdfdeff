"""Writers that misbehave: a file still held open and written after it was claimed."""

from __future__ import annotations

import json
from typing import Any

from .harness import Tree, wait_until


def test_write_after_claim_fails_the_file(tree: Tree, start_daemon: Any) -> None:
    """A writer that keeps the file open and writes after the claim: the file fails, named why.

    Claimed while open only where leases are refused (the probe would keep it
    in incoming/: tests/test_lease.py): the fallback's own safety net.
    """
    marker = tree.root / "go"
    tree.write_config(
        f"""
- name: waits
  match: "*.txt"
  stages:
    - name: wait-for-marker
      command: ["sh", "-c", "while [ ! -e {marker} ]; do sleep 0.02; done"]
""",
        settle_time="0.3s",
        rescan_interval="0.2s",
    )
    daemon = start_daemon(env={"DROPLINE_LEASE_REFUSE": "EINVAL"})
    daemon.wait_event("daemon.ready")
    with (tree.incoming / "held.txt").open("wb") as writer:
        writer.write(b"first part\n")
        writer.flush()
        # Found by a rescan once stable for settle_time, though still open.
        daemon.wait_event("stage.started", file="held.txt")
        writer.write(b"written after the claim\n")
        writer.flush()
    marker.touch()
    wait_until(lambda: (tree.failed / "held.txt").exists(), timeout=10, what="failed/held.txt")
    doc = json.loads((tree.failed / "held.txt.error.json").read_text())
    assert "modified after it was claimed" in doc["error"]
    assert not (tree.archive / "held.txt").exists()
    assert daemon.stop() == 0


def test_stage_that_rewrites_the_file_is_not_a_writer(tree: Tree, start_daemon: Any) -> None:
    """A stage declared `modifies: true` may rewrite the file: later steps accept the change."""
    tree.write_config(
        """
- name: rewrite
  match: "*.txt"
  stages:
    - name: upper
      command: ["sh", "-c", "t=$(tr a-z A-Z < \\"$0\\"); echo \\"$t\\" > \\"$0\\"", "{path}"]
      modifies: true
    - name: checksum
      builtin: sha256
"""
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "lower.txt").write_bytes(b"hello\n")
    wait_until(lambda: "lower.txt" in tree.archived(), timeout=10, what="lower.txt archived")
    assert tree.archived()["lower.txt"].read_bytes() == b"HELLO\n"
    assert not list(tree.working.iterdir())
    assert daemon.stop() == 0
