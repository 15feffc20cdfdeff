"""Hostile input in incoming/ (RELIABILITY.md 13-14), against a real daemon.

Links, FIFOs, sockets, directories and device nodes are never followed nor
opened, stay where the dropper put them and are refused exactly once each;
file names are data: archived verbatim, passed as argv, logged escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, run_until_idle, wait_until

SECRET_MARKER = b"SECRET-MARKER-5f0c2e9a-must-never-leave-its-file"

ALL_FILES = """
- name: everything
  match: "*"
"""

# Each hostile kind, and a word its refusal reason must contain.
HOSTILE_KINDS: dict[str, str] = {
    "link-to-secret": "symbolic link",
    "dangling-link": "symbolic link",
    "hardlink-to-secret": "hard link",
    "fifo": "FIFO",
    "socket": "socket",
    "directory": "recursive is off",
    "device": "device",
}

INSIDE = b"a file inside a dropped directory\n"
RESCAN = "0.3s"  # several rescans fit in a second: a refusal must not repeat on each
# A folder is refused only where recursive is off (on, its files are processed:
# tests/test_folders.py); here it is off, so that the folder is refused and its
# file stays untouched.


@dataclass(frozen=True)
class Snapshot:
    """What lstat (and readlink) say of an entry: any change by the daemon shows here."""

    mode: int
    dev: int
    ino: int
    nlink: int
    size: int
    mtime_ns: int
    ctime_ns: int
    target: str | None


def snapshot(path: Path) -> Snapshot:
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return Snapshot(
        st.st_mode,
        st.st_dev,
        st.st_ino,
        st.st_nlink,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        target,
    )


def make_secret(tree: Tree) -> Path:
    """A file outside the data tree that no dropper should ever obtain through dropline."""
    secret = tree.root / "secret"
    secret.write_bytes(b"header\n" + SECRET_MARKER + b"\n")
    secret.chmod(0o600)
    return secret


def make_hostile(where: Path, secret: Path, suffix: str = "") -> list[str]:
    """Create one entry of each hostile kind in WHERE (names KIND + SUFFIX); return the names."""
    names = [kind + suffix for kind in HOSTILE_KINDS]
    link, dangling, hardlink, fifo, sock, directory, device = (where / n for n in names)
    link.symlink_to(secret)
    dangling.symlink_to(where / "no-such-file-anywhere")
    os.link(secret, hardlink)
    os.mkfifo(fifo)
    # An AF_UNIX path is limited to 108 bytes; a relative one from inside WHERE is short.
    with contextlib.chdir(where), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(sock.name)
    directory.mkdir()
    (directory / "inside.txt").write_bytes(INSIDE)
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return names


def regular_files(root: Path) -> list[Path]:
    """Every regular file under ROOT, without following any link."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
    return found


def refusals(daemon: DaemonProcess) -> Counter[str]:
    return Counter(str(e.get("file")) for e in daemon.find("entry.refused"))


def wait_rescans(daemon: DaemonProcess, count: int = 3, timeout: float = 10.0) -> None:
    """Wait (with a deadline) until COUNT more scans of incoming/ have completed."""
    start = len(daemon.find("scan.completed"))
    wait_until(
        lambda: (
            len(daemon.find("scan.completed")) >= start + count or daemon.proc.poll() is not None
        ),
        timeout,
        what=f"{count} rescans",
    )
    assert daemon.proc.poll() is None, daemon.text()[-4000:]


def check_refused_and_untouched(
    tree: Tree, daemon: DaemonProcess, before: dict[str, Snapshot], secret: Path
) -> None:
    """Each hostile entry refused once with its reason, still in incoming/, unchanged."""
    names = list(before)
    wait_until(
        lambda: set(names) <= set(refusals(daemon)) or daemon.proc.poll() is not None,
        what="every hostile entry refused",
    )
    assert daemon.proc.poll() is None, daemon.text()[-4000:]
    # Rescans find the same entries again: the refusal is remembered, not repeated.
    wait_rescans(daemon)
    assert refusals(daemon) == Counter(dict.fromkeys(names, 1))
    for event in daemon.find("entry.refused"):
        kind = next(k for k in HOSTILE_KINDS if event["file"].startswith(k))
        assert HOSTILE_KINDS[kind] in event["reason"], event
        assert event["level"] == "warning"
    for name, snap in before.items():
        assert snapshot(tree.incoming / name) == snap, name
    for name in names:
        if name.startswith("directory"):
            assert (tree.incoming / name / "inside.txt").read_bytes() == INSIDE, name
    assert secret.read_bytes() == b"header\n" + SECRET_MARKER + b"\n"
    # The secret reached no file dropline wrote, nor its log.
    for path in regular_files(tree.archive) + regular_files(tree.failed):
        assert SECRET_MARKER not in path.read_bytes(), path
    assert not regular_files(tree.working)
    assert not list(tree.failed.iterdir())
    assert SECRET_MARKER not in daemon.log_path.read_bytes()
    assert not daemon.find("<raw>"), "a log line is not JSON"
    assert not daemon.find("file.failed")


def test_hostile_entries_dropped_while_running_are_refused_once(
    tree: Tree, start_daemon: Any
) -> None:
    """Links, a FIFO, a socket, a directory, a device dropped live: refused once, never opened.

    Each kind is both created in place (found by a rescan) and renamed in (an
    inotify event).  A FIFO without a writer would hang a blocking open; the
    normal file dropped after them being archived shows the daemon never blocked.
    """
    tree.write_config(ALL_FILES, rescan_interval=RESCAN, recursive=False)
    secret = make_secret(tree)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")

    names = make_hostile(tree.incoming, secret, "-inplace")
    staging = tree.root / "staging"
    staging.mkdir()
    for name in make_hostile(staging, secret, "-moved"):
        os.rename(staging / name, tree.incoming / name)
        names.append(name)
    before = {name: snapshot(tree.incoming / name) for name in names}
    (tree.incoming / "after.txt").write_bytes(b"a normal file\n")

    wait_until(lambda: "after.txt" in tree.archived(), timeout=5.0, what="after.txt archived")
    assert tree.archived()["after.txt"].read_bytes() == b"a normal file\n"
    check_refused_and_untouched(tree, daemon, before, secret)
    assert set(tree.archived()) == {"after.txt"}
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    daemon.wait_event("daemon.stopped")


def test_hostile_entries_present_before_start_are_refused_once(
    tree: Tree, start_daemon: Any
) -> None:
    """The same entries waiting in incoming/ at start-up: the first scan refuses each once."""
    tree.write_config(ALL_FILES, rescan_interval=RESCAN, recursive=False)
    secret = make_secret(tree)
    names = make_hostile(tree.incoming, secret)
    (tree.incoming / "before.txt").write_bytes(b"waiting since before the start\n")
    before = {name: snapshot(tree.incoming / name) for name in names}

    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "after.txt").write_bytes(b"dropped after the start\n")
    wait_until(
        lambda: {"before.txt", "after.txt"} <= set(tree.archived()),
        timeout=5.0,
        what="before.txt and after.txt archived",
    )
    check_refused_and_untouched(tree, daemon, before, secret)
    assert set(tree.archived()) == {"before.txt", "after.txt"}
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    daemon.wait_event("daemon.stopped")


# Odd stems, and how the log must show them.  Each is dropped as STEM.txt (a
# pipeline with a command stage) and STEM.dat (a pipeline without stages).
ODD_STEMS: dict[bytes, str] = {
    b"line1\nline2": "line1\\nline2",
    b"bad-\xff\xfe": "bad-\\xff\\xfe",
    b"\x1b[31mred\x1b[0m": "\\x1b[31mred\\x1b[0m",
    b"tab\tand\rreturn": "tab\\tand\\rreturn",
    "c1-\u009b31mcsi".encode(): "c1-\\u009b31mcsi",  # the one-byte CSI of C1 terminals
    "rlo-\u202egnp".encode(): "rlo-\\u202egnp",  # right-to-left override
    b"back\\slash": "back\\\\slash",
    b"-rf": "-rf",
    b"$(touch pwned)": "$(touch pwned)",
    b"`id`": "`id`",
    b"semi;colon|pipe&amp>redirect": "semi;colon|pipe&amp>redirect",
    b"spaces and 'single' \"double\" quotes": "spaces and 'single' \"double\" quotes",
    "café-日本".encode(): "café-日本",
    b"a" * 251: "a" * 251,  # with its extension: 255 bytes, NAME_MAX
}

CAT_AND_PLAIN = """
- name: cat
  match: "*.txt"
  stages:
    - name: cat
      command: ["/bin/cat", "{path}"]
      retries: 0
- name: plain
  match: "*.dat"
"""


def drop(incoming: Path, name: bytes, data: bytes) -> None:
    """Write incoming/NAME with a bytes name, exactly as given."""
    fd = os.open(os.fsencode(incoming) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.mark.parametrize("when", ["live", "backlog"])
def test_odd_names_are_archived_verbatim_and_logged_escaped(
    tree: Tree, start_daemon: Any, when: str
) -> None:
    """Newlines, bad UTF-8, ANSI escapes, shell syntax, 255 bytes: archived as is, logged escaped.

    A name is argv data for a command stage (no shell runs, so no "pwned"
    appears); in the log it cannot forge a line or carry a raw escape byte.
    """
    tree.write_config(CAT_AND_PLAIN)
    expected: dict[bytes, bytes] = {}
    shown: dict[bytes, str] = {}
    for i, (stem, escaped) in enumerate(ODD_STEMS.items()):
        for ext in (b".txt", b".dat"):
            expected[stem + ext] = b"payload %d\n" % i + os.urandom(64)
            shown[stem + ext] = escaped + ext.decode()
    assert len(b"a" * 251 + b".txt") == 255

    if when == "backlog":
        for name, data in expected.items():
            drop(tree.incoming, name, data)
        assert run_until_idle(tree) == 0
    else:
        daemon = start_daemon()
        daemon.wait_event("daemon.ready")
        for name, data in expected.items():
            drop(tree.incoming, name, data)
        wait_until(
            lambda: (
                (not os.listdir(tree.incoming) and not os.listdir(tree.working))
                or daemon.proc.poll() is not None
            ),
            what="every odd name claimed and finished",
        )
        assert daemon.proc.poll() is None, daemon.text()[-4000:]
        assert daemon.stop() == 0

    # No name was ever interpreted by a shell.
    for root in {tree.root, Path.cwd()}:
        for _dirpath, dirs, files in os.walk(root):
            assert "pwned" not in files + dirs, root
    archive = os.fsencode(tree.archive)
    assert not os.listdir(os.fsencode(tree.failed))
    assert sorted(os.listdir(archive)) == sorted(expected)
    for name, data in expected.items():
        with open(archive + b"/" + name, "rb") as f:
            assert f.read() == data, name
    assert not os.listdir(os.fsencode(tree.incoming))
    assert not os.listdir(os.fsencode(tree.working))

    raw = (tree.root / "daemon.log").read_bytes()
    assert b"\x1b" not in raw
    events = [json.loads(line) for line in raw.splitlines()]  # one JSON object per line
    assert all(isinstance(e, dict) for e in events)
    for e in events:
        if "file" in e:
            assert e["file"].isprintable(), e
    for name, text in shown.items():
        for event in ("file.claimed", "file.archived"):
            matching = [e for e in events if e.get("event") == event and e.get("file") == text]
            assert len(matching) == 1, (event, text)
        succeeded = [e for e in events if e.get("event") == "stage.succeeded" and e["file"] == text]
        assert len(succeeded) == (1 if name.endswith(b".txt") else 0), text
    assert not [e for e in events if e.get("event") in ("stage.failed", "entry.refused")]


def test_long_name_colliding_in_archive_gets_shortened_suffix(tree: Tree) -> None:
    """A 255-byte name already taken in archive/: archived under a suffixed name of <= 255 bytes."""
    tree.write_config(ALL_FILES)
    name = b"a" * 251 + b".txt"
    archive = os.fsencode(tree.archive)
    drop(tree.archive, name, b"first, already archived\n")
    drop(tree.incoming, name, b"second, same name\n")
    assert run_until_idle(tree) == 0

    with open(archive + b"/" + name, "rb") as f:
        assert f.read() == b"first, already archived\n"
    (other,) = [n for n in os.listdir(archive) if n != name]
    assert len(other) <= 255
    assert other.startswith(b"aaaa") and other.endswith(b".txt")
    with open(archive + b"/" + other, "rb") as f:
        assert f.read() == b"second, same name\n"
    assert not os.listdir(os.fsencode(tree.incoming))


def test_long_name_failing_leaves_room_for_its_error_json(tree: Tree) -> None:
    """A 255-byte name no pipeline matches: in failed/ under a name NAME.error.json fits beside."""
    tree.write_config('- name: text\n  match: "*.txt"\n')
    name = b"b" * 251 + b".bin"
    drop(tree.incoming, name, b"unmatched\n")
    assert run_until_idle(tree) == 0

    failed = sorted(os.listdir(os.fsencode(tree.failed)))
    assert len(failed) == 2, failed
    error_json, moved = sorted(failed, key=lambda n: n.endswith(b".error.json"), reverse=True)
    assert error_json == moved + b".error.json"
    assert len(error_json) <= 255
    with open(os.fsencode(tree.failed) + b"/" + moved, "rb") as f:
        assert f.read() == b"unmatched\n"
    with open(os.fsencode(tree.failed) + b"/" + error_json, "rb") as f:
        doc = json.load(f)
    assert doc["name"] == name.decode()
    assert doc["error"] == "no pipeline matches this name"


def test_file_over_max_file_size_is_refused_once(tree: Tree, start_daemon: Any) -> None:
    """2 KiB over a max_file_size of 1KiB: refused once, naming the limit; left in incoming/."""
    tree.write_config(ALL_FILES, max_file_size="1KiB", rescan_interval=RESCAN)
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    big = os.urandom(2048)
    (tree.incoming / "big.bin").write_bytes(big)
    (tree.incoming / "small.bin").write_bytes(b"x" * 100)

    refused = daemon.wait_event("entry.refused", file="big.bin")
    assert any(limit in refused["reason"] for limit in ("1024", "1KiB", "1 KiB")), refused
    wait_until(lambda: "small.bin" in tree.archived(), timeout=5.0, what="small.bin archived")
    wait_rescans(daemon)
    assert refusals(daemon) == Counter({"big.bin": 1})
    assert (tree.incoming / "big.bin").read_bytes() == big
    assert set(tree.archived()) == {"small.bin"}
    assert not list(tree.failed.iterdir())
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
