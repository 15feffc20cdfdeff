"""A writer that rewrites a file while dropline claims it, with the race window held open.

The daemon is started with DROPLINE_DELAY_AT=claim.synced@1 (``crashpoints.py``):
once the first claim batch is renamed into working/ and before the claimed
files are read, it waits until the test touches a file.  In that window the
test does what a real writer does by chance: it writes on into the file it
still holds open (now in working/), and, if asked, makes a new file of the
same name in incoming/ (the next turn of ``while :; do seq ... > NAME; done``).
So the claim finds the file changed (put back), and the put-back finds its
name taken (kept as an earlier delivery): deterministically, at every run.

The read-lease probe would not claim a file its writer still holds open
(``lease.py``; tests/test_lease.py), so these run as where leases are
refused (DROPLINE_LEASE_REFUSE=EINVAL): a filesystem without leases, or a
writer the probe cannot see, is what leaves these paths to the claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .harness import DaemonProcess, Tree, wait_until

PASSTHROUGH = """
- name: passthrough
  match: "*"
  stages: []
"""


def delay_env(tree: Tree, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that holds the daemon after its first claim's renames."""
    env = {
        "DROPLINE_DELAY_AT": "claim.synced@1:60",
        "DROPLINE_DELAY_UNTIL": str(tree.root / "go"),
        "DROPLINE_LEASE_REFUSE": "EINVAL",
    }
    env.update(extra or {})
    return env


@dataclass
class Rewrite:
    """What the writer delivered: the first version (as it ended) and, if any, the next."""

    first: bytes
    second: bytes | None


def rewrite_during_claim(
    tree: Tree, daemon: DaemonProcess, name: str, *, again: bool, wait_ready: bool = True
) -> Rewrite:
    """Write NAME, let the daemon claim it, write on into it once it is in working/,
    and (AGAIN) make a new NAME in incoming/; then let the daemon go on."""
    if wait_ready:
        daemon.wait_event("daemon.ready")
    path = tree.incoming / name
    head, tail, second = b"first version, begun\n", b"and ended\n", b"second version\n"
    with path.open("wb") as writer:
        writer.write(head)
        writer.flush()
        with path.open("ab"):
            pass  # a close of another descriptor: the daemon claims it now
        wait_until(
            lambda: (tree.working / name).exists() or daemon.proc.poll() is not None,
            timeout=10,
            what=f"working/{name}",
        )
        assert daemon.proc.poll() is None, daemon.text()[-4000:]
        writer.write(tail)  # the writer still held it open: now in working/
    if again:
        Path(path).write_bytes(second)
    (tree.root / "go").touch()
    return Rewrite(head + tail, second if again else None)
