"""What the tier of real writers shares: the tools, a daemon as installed, the verdict.

The daemon runs with a single passthrough pipeline and the default settings
(settle time, rescan interval, ignore list, archive layout), as a new
operator's would; only the log is JSON, for the test to read.  After a tool
has written, ``Verdict`` waits until dropline has nothing more to do (or
nothing has changed for a while), then says, per delivery, whether it was
archived exactly once and intact, and what else happened: auxiliary files
claimed, files left in ``working/`` or ``incoming/``, rows never finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, wait_until, walk_entries

PASSTHROUGH = """
- name: passthrough
  match: "*"
  stages: []
"""

# Longer than the default settle_time (2 s): a file put back or found by a scan
# has had its chance to be claimed before the folders are judged quiet.
QUIET = 3.0

# Names of the auxiliary files of the tools tried here, to say what was claimed.
AUXILIARY_HINTS = (
    ("sed", "sed -i's temporary"),
    ("4913", "vim's write test"),
    ("-journal", "SQLite's rollback journal"),
    ("-wal", "SQLite's write-ahead log"),
    ("-shm", "SQLite's shared memory"),
    ("tmp", "a temporary of tempfile.mkstemp"),
)


def need(*tools: str) -> None:
    """Skip the test, naming each missing tool (``make test`` installs them as root)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make test installs it as root)")


def attempt(argv: Sequence[str | Path], *, cwd: Path | None = None, **kw: Any) -> str:
    """Run a real tool; '' if it succeeded, else what it said (for the verdict)."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        timeout=kw.pop("timeout", 120),
        check=False,
        **kw,
    )
    if done.returncode == 0:
        return ""
    said = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
    args = [str(a) for a in argv]
    if args[0] == "strace":  # name the tool, not what held it back
        args = args[next(i for i, a in enumerate(args) if a.startswith("inject=")) + 1 :]
    return f"{Path(args[0]).name} exited {done.returncode}: {said[-1500:]}"


def run(argv: Sequence[str | Path], *, cwd: Path | None = None, **kw: Any) -> None:
    """Run a real tool; fail the test with its output if it fails."""
    failure = attempt(argv, cwd=cwd, **kw)
    assert not failure, failure


def sh(script: str, *, cwd: Path | None = None, timeout: float = 120) -> None:
    run(["sh", "-ec", script], cwd=cwd, timeout=timeout)


def slowed(syscalls: str, delay_us: int = 400_000) -> list[str]:
    """A prefix that runs a tool with SYSCALLS delayed (strace's fault injection).

    A tool's own race window (between closing a temporary and renaming or
    removing it) is microseconds wide; held open for DELAY_US it is lost every
    time instead of once in hundreds of runs, with the real tool doing its
    usual calls in its usual order.
    """
    need("strace")
    # Injection acts on traced calls only: trace exactly those, into /dev/null.
    return ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscalls}",
            "-e", f"inject={syscalls}:delay_enter={delay_us}"]  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Row:
    name: str
    state: str
    path: Path | None  # where it ended, when archived or failed
    created_at: float


def rows(tree: Tree) -> list[Row]:
    if not tree.state_db.exists():
        return []
    found = []
    for name, state, final_dir, final_name, created in tree.query(
        "SELECT name, state, final_dir, final_name, created_at FROM items ORDER BY created_at"
    ):
        where = {"archived": tree.archive, "failed": tree.failed}.get(state)
        path = None
        if where is not None and final_name is not None:
            path = where / (final_dir or "") / os.fsdecode(final_name)
        found.append(Row(os.fsdecode(name), state, path, created))
    return found


def listing(folder: Path) -> list[str]:
    """Everything in FOLDER, sub-folders' contents as relative paths."""
    return [str(p.relative_to(folder)) for p in walk_entries(folder)]


@dataclass
class Verdict:
    """What became of what a tool delivered, judged once dropline is done or quiet.

    EXPECTED maps each delivered name to its final content.  ``versions``
    maps a name that the tool wrote several times to every content it had:
    each archived copy of it must be one of them and the last one must be
    archived.  ``leftovers`` names entries that may stay in incoming/
    (ignored temporaries a tool leaves by design).
    """

    tree: Tree
    daemon: DaemonProcess
    expected: dict[str, bytes]
    versions: dict[str, list[bytes]] = field(default_factory=dict)
    leftovers: frozenset[str] = frozenset()
    tool_errors: Sequence[str] = ()  # what the tool said when it failed (attempt())
    timeout: float = 30.0

    def _done(self) -> bool:
        found: list[Row] = rows(self.tree)
        if any(r.state not in ("archived", "failed") for r in found):
            return False
        if os.listdir(self.tree.working):
            return False
        if set(os.listdir(self.tree.incoming)) - self.leftovers:
            return False
        ended = {r.name for r in found}
        return set(self.expected) <= ended

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            listing(self.tree.incoming),
            listing(self.tree.working),
            [(r.name, r.state) for r in rows(self.tree)],
        )

    def settle(self) -> None:
        """Wait until dropline is done with everything, or nothing changes for QUIET s."""
        last: list[Any] = [None, time.monotonic()]  # the last snapshot, since when

        def done_or_quiet() -> bool:
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.daemon.text()[-4000:]}")
            if self._done():
                return True
            snap = self._snapshot()
            if snap != last[0]:
                last[:] = [snap, time.monotonic()]
            quiet: bool = time.monotonic() - last[1] > QUIET
            return quiet

        wait_until(done_or_quiet, self.timeout, interval=0.05, what="dropline done or quiet")

    def problems(self) -> list[str]:
        """Every way the outcome differs from what was delivered (empty: all well)."""
        out = [e for e in self.tool_errors if e]
        found = rows(self.tree)
        by_name: dict[str, list[Row]] = {}
        for r in found:
            by_name.setdefault(r.name, []).append(r)
        for name, content in self.expected.items():
            copies = by_name.get(name, [])
            archived = [r for r in copies if r.state == "archived"]
            if name in self.versions:
                allowed = {sha(v) for v in self.versions[name]}
                for r in archived:
                    if r.path is None or sha(r.path.read_bytes()) not in allowed:
                        out.append(f"{name}: an archived copy is no version the tool wrote")
                if not any(r.path and r.path.read_bytes() == content for r in archived):
                    out.append(f"{name}: its final content was never archived")
            elif len(archived) != 1:
                out.append(f"{name}: archived {len(archived)} times, not once")
            elif archived[0].path is None or archived[0].path.read_bytes() != content:
                out.append(f"{name}: the archived copy differs from what was delivered")
            for r in copies:
                if r.state != "archived":
                    out.append(f"{name}: a row left {r.state}")
        for name, copies in by_name.items():
            if name not in self.expected:
                hint = next((why for key, why in AUXILIARY_HINTS if key in name), "")
                out.append(f"claimed a file never delivered: {name!r} x{len(copies)} {hint}")
        if os.listdir(self.tree.working):
            out.append(f"left in working/: {listing(self.tree.working)}")
        left = set(os.listdir(self.tree.incoming)) - self.leftovers
        if left:
            out.append(f"left in incoming/: {sorted(left)}")
        if any(p.is_file() for p in self.tree.failed.iterdir()):
            out.append(f"in failed/: {listing(self.tree.failed)}")
        return out

    def check(self) -> None:
        self.settle()
        problems = self.problems()
        assert not problems, (
            "\n".join(problems) + "\n--- daemon log tail:\n" + (self.daemon.text()[-3000:])
        )


def judge(
    tree: Tree,
    daemon: DaemonProcess,
    expected: dict[str, bytes],
    **kw: Any,
) -> None:
    Verdict(tree, daemon, expected, **kw).check()


# --- a local HTTP server for curl and wget ---------------------------------


@dataclass
class Served:
    """Files served over HTTP on 127.0.0.1 from a folder of the test's own."""

    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(name="served")
def served_fixture(tmp_path: Path) -> Iterator[Served]:
    """An HTTP server on 127.0.0.1 in a thread, serving the test's folder served/."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        assert isinstance(port, int)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        yield Served(root, port)
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- a small tmpfs for moves across filesystems --------------------------------

Mounter = Callable[[Path, str], None]


@pytest.fixture(name="mount_tmpfs")
def mount_tmpfs_fixture() -> Iterator[Mounter]:
    """mount_tmpfs(path, options): a tmpfs on PATH, unmounted at teardown (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "dropline-test", str(path)], check=True
        )
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- the daemon as a new operator runs it -------------------------------------


@pytest.fixture(name="dropline")
def dropline_fixture(
    tree: Tree, start_daemon: Any, request: pytest.FixtureRequest
) -> DaemonProcess:
    """A daemon on TREE: one passthrough pipeline, default settings (but those a
    test's ``settings`` mark names), ready."""
    marker = request.node.get_closest_marker("settings")
    settings = list(marker.args) if marker is not None else []
    tree.config.write_text(
        "\n".join(
            [
                f"data_dir: {tree.data}",
                f"state_db: {tree.state_db}",
                "log_format: json",
                *settings,
                "pipelines:",
                *("  " + line for line in PASSTHROUGH.strip("\n").splitlines()),
            ]
        )
        + "\n"
    )
    daemon: DaemonProcess = start_daemon()
    daemon.wait_event("daemon.ready")
    return daemon


def content(tag: str, size: int = 5000) -> bytes:
    """Text of about SIZE bytes, different for each TAG (lines, as tools expect)."""
    line = f"{tag} line of some text, repeated to make a file of a few kilobytes\n".encode()
    return (line * (size // len(line) + 1))[:size].rsplit(b"\n", 1)[0] + b"\n"
