"""Hostile droppers against the installed service (RELIABILITY.md, "Hostile input in incoming/").

Everything here is done by DROPPER, a member of droppers and not root, in the
service's own incoming/: links to secrets, a FIFO, a socket, a directory, a
file rewritten after its drop, a file held open while written, odd names,
a descriptor kept open after a close (not claimed while held: the lease
probe).  None is followed, none blocks, no secret reaches archive/, failed/,
a stage or the journal, no name is executed, the service stays up, and each
refusal is logged once, with its reason.  The same input dropped by root
(device nodes included) is covered against a bare daemon by
tests/test_hostile.py.
"""

from __future__ import annotations

import functools
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness import wait_until
from .container import CONFIG, DATA, DROPPER, TIMINGS, UNIT, Container

INCOMING = f"{DATA}/incoming"
HOME = f"/home/{DROPPER}"
# Readable by root alone, and readable by the dropline user but not by the
# dropper: the second is what a confused deputy could leak.
ROOT_SECRET = "/etc/dropline-secret"
DAEMON_SECRET = "/etc/dropline-secret-automation"
ALICE_OWN = f"{HOME}/own-file.csv"  # the dropper's own file, outside incoming/
# The container's /tmp shows the host's (an overlay), where others work: in
# depth, only the service's private /tmp and /var/tmp (PrivateTmp=yes) are searched.
PRIVATE_TMP = (
    "/tmp/systemd-private-*-dropline.service-* /var/tmp/systemd-private-*-dropline.service-*"
)

# Each hostile kind the dropper can make (KIND, extension), and a word its
# refusal reason must contain.  Each is made twice: in place in incoming/ (only
# a rescan finds it: inotify reports closed writes and renames, not creations)
# and in the dropper's home, then renamed in (IN_MOVED_TO).
HOSTILE_KINDS: dict[tuple[str, str], str] = {
    ("link-to-root-secret", ".csv"): "symbolic link",
    ("link-to-daemon-secret", ".csv"): "symbolic link",
    ("dangling-link", ".csv"): "symbolic link",
    ("hardlink-to-own-file", ".csv"): "hard links",
    ("fifo", ".csv"): "FIFO",
    ("socket", ""): "socket",
    ("directory", ""): "recursive is off",
}
MOVED = "-moved"
HOSTILE: dict[str, str] = {
    f"hostile-{kind}{suffix}{ext}": word
    for (kind, ext), word in HOSTILE_KINDS.items()
    for suffix in ("", MOVED)
}
INSIDE_DIRECTORY = "inside.csv"
STAGING = f"{HOME}/staging"

# Makes one entry of each kind in the folder $1, named hostile-KIND$2EXT.
MAKE_HOSTILE = f"""
cd "$1"; s=$2
ln -s {ROOT_SECRET} "hostile-link-to-root-secret$s.csv"
ln -s {DAEMON_SECRET} "hostile-link-to-daemon-secret$s.csv"
ln -s {INCOMING}/no-such-file-anywhere.csv "hostile-dangling-link$s.csv"
ln {ALICE_OWN} "hostile-hardlink-to-own-file$s.csv"
mkfifo "hostile-fifo$s.csv"
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "hostile-socket$s"
mkdir "hostile-directory$s"
echo "in a dropped directory" > "hostile-directory$s/{INSIDE_DIRECTORY}"
"""

# Odd names, and how the journal's FILE field must show them (escaped, one line).
ODD_NAMES: dict[bytes, str] = {
    b"line1\nline2.csv": "line1\\nline2.csv",
    b"\x1b[31mred\x1b[0m.csv": "\\x1b[31mred\\x1b[0m.csv",
    # No "/" can be in a name: the payload spells it with printf, so a shell
    # that ran it would leave /tmp/pwned (the service's private /tmp).
    b"$(touch \"$(printf '\\057tmp\\057pwned')\").csv": (
        "$(touch \"$(printf '\\\\057tmp\\\\057pwned')\").csv"
    ),
    b"`touch \"$(printf '\\057tmp\\057pwned-backtick')\"`.csv": (
        "`touch \"$(printf '\\\\057tmp\\\\057pwned-backtick')\"`.csv"
    ),
    b";touch pwned-semicolon;.csv": ";touch pwned-semicolon;.csv",
    b"-rf.csv": "-rf.csv",
    b"bad-\xff\xfe.csv": "bad-\\xff\\xfe.csv",
    b"a" * 251 + b".csv": "a" * 251 + ".csv",  # 255 bytes, NAME_MAX
}

# Writes each NAME given as a printf format (octal escapes) with its CONTENT.
DROP_PRINTF = f"""
cd {INCOMING}
while [ "$#" -gt 0 ]; do
  name=$(printf "$1")
  printf '%s' "$2" > "$name"
  shift 2
done
"""

# Writes part1, keeps the file open about a second (less than settle_time, 2 s),
# writes part2, closes.
HOLD_OPEN = f"""
exec 3> {INCOMING}/held.csv
echo part1 >&3
sleep 1
echo part2 >&3
exec 3>&-
"""


# Writes through one descriptor and closes it (IN_CLOSE_WRITE), keeps a second
# one open, and writes through it once $1 exists.
KEPT_OPEN = f"""
exec 3> {INCOMING}/kept.csv
echo part1 >&3
exec 4>> {INCOMING}/kept.csv
exec 3>&-
while [ ! -e "$1" ]; do sleep 0.05; done
echo part2 >&4
exec 4>&-
"""
CAP_LEASE = 1 << 28


@dataclass(frozen=True)
class Snapshot:
    """What lstat (and readlink) say of an entry: any change by the daemon shows here."""

    mode: int
    ino: int
    nlink: int
    uid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    target: str | None


def snapshot(path: Path) -> Snapshot:
    """lstat PATH, never following it."""
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return Snapshot(
        st.st_mode,
        st.st_ino,
        st.st_nlink,
        st.st_uid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        target,
    )


def printf_format(name: bytes) -> str:
    """NAME as a printf format: bytes but printable ASCII, and \\ % -, as octal escapes."""
    special = b"\\%-"  # an escape, a conversion, an option (a leading dash)
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in special else f"\\{b:03o}" for b in name)


def regular_files(root: Path) -> dict[bytes, Path]:
    """Every regular file under ROOT (bytes name -> path), without following links."""
    found: dict[bytes, Path] = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.setdefault(name, Path(os.fsdecode(path)))
    return found


def archived(box: Container, name: bytes) -> list[Path]:
    """Files under archive/ named NAME, or NAME with the item id before its extension."""
    stem, dot, ext = name.rpartition(b".")
    found = []
    for dirpath, _dirs, files in os.walk(os.fsencode(box.path(f"{DATA}/archive"))):
        for file in files:
            if file == name or (dot and file.startswith(stem + b".") and file.endswith(dot + ext)):
                found.append(Path(os.fsdecode(os.path.join(dirpath, file))))
    return sorted(found)


def events(box: Container, event: str, pid: str, **fields: str) -> list[dict[str, Any]]:
    """Journal entries EVENT of the daemon process PID with FIELDS (upper-cased keys)."""
    matches = [f"{key.upper()}={value}" for key, value in fields.items()]
    return box.journal(f"EVENT={event}", f"_PID={pid}", *matches)


def assert_never_executed(box: Container) -> None:
    """No "pwned" file anywhere a shell run by the daemon or a stage could have written."""
    private = box.sh(f"ls -d {PRIVATE_TMP}").stdout.split()
    assert len(private) == 2, f"the service's private /tmp and /var/tmp: {private}"
    found = box.sh(
        f"find {PRIVATE_TMP} /opt/automation /var/lib/dropline -name 'pwned*'\n"
        "for d in / /tmp /var/tmp /root /home; do\n"
        "  find \"$d\" -maxdepth 1 -name 'pwned*' 2>/dev/null || true\n"
        "done"
    ).stdout
    assert found.strip() == "", f"a name was executed: {found}"


def wait_scans(box: Container, pid: str, count: int, timeout: float = 15.0) -> None:
    """Wait until COUNT more scans of incoming/ by the process PID have completed."""
    start = len(events(box, "scan.completed", pid))
    wait_until(
        lambda: len(events(box, "scan.completed", pid)) >= start + count,
        timeout,
        interval=0.2,
        what=f"{count} rescans",
    )


def assert_still_up(box: Container, before: dict[str, str]) -> None:
    """The service is running, as the same process, without automatic restarts since BEFORE."""
    after = box.wait_active()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])


def test_hostile_entries_refused_once_and_never_followed(dropline: Container) -> None:
    """Links to secrets, a FIFO, a socket, a directory: refused once each, untouched, secrets kept.

    Made in place and renamed in, by the dropper.  Normal files dropped after
    them are archived at once (the FIFO blocks nothing); over several rescans,
    and across a reload, each refusal stays logged once, with its reason, by
    the same daemon process; no secret reaches a file dropline wrote nor its log.
    """
    box = dropline
    original_config = box.path(CONFIG).read_bytes()
    since = int(time.time()) - 1
    token = uuid.uuid4().hex
    markers = {
        ROOT_SECRET: f"ROOT-SECRET-{token}",
        DAEMON_SECRET: f"DAEMON-SECRET-{token}",
        ALICE_OWN: f"ALICE-OWN-{token}",
    }
    incoming = box.path(INCOMING)
    try:
        # Rescans every second, so that "once" is seen over several.  A restart,
        # not a reload: a reload keeps the next rescan where the old 60 s put it.
        # And recursive off: a folder is then refused, its file left as it is (on,
        # the default, its files are processed: tests/test_folders.py).
        rescans = original_config.replace(
            b"rescan_interval: 60s", b"rescan_interval: 1s\nrecursive: false"
        )
        assert rescans != original_config
        box.put(CONFIG, rescans)
        box.systemctl("restart", UNIT)
        before = box.wait_active()
        pid = before["MainPID"]

        box.sh(
            f'umask 077; echo "$1" > {ROOT_SECRET}\n'
            f'umask 027; echo "$2" > {DAEMON_SECRET}; chgrp automation {DAEMON_SECRET}\n'
            f"install -d -o {DROPPER} -g {DROPPER} -m 0755 {HOME}",
            markers[ROOT_SECRET],
            markers[DAEMON_SECRET],
        )
        box.sh(f'echo "$1" > {ALICE_OWN}; mkdir -p {STAGING}', markers[ALICE_OWN], user=DROPPER)

        # The kernel's own protections come first.
        assert box.run("cat", "/proc/sys/fs/protected_hardlinks").stdout.strip() == "1"
        for secret in (ROOT_SECRET, DAEMON_SECRET):
            tried = box.sh(
                f"ln {secret} {INCOMING}/hostile-hardlink.csv", user=DROPPER, check=False
            )
            assert tried.returncode != 0 and "Operation not permitted" in tried.stderr, tried
            read = box.sh(f"cat {secret}", user=DROPPER, check=False)
            assert read.returncode != 0 and markers[secret] not in read.stdout, read
        tried = box.sh(f"mknod {INCOMING}/hostile-device c 1 3", user=DROPPER, check=False)
        assert tried.returncode != 0 and "Operation not permitted" in tried.stderr, tried
        assert not os.path.lexists(incoming / "hostile-hardlink.csv")
        assert not os.path.lexists(incoming / "hostile-device")
        # A device node needs CAP_MKNOD: tests/test_hostile.py drops one as root.

        made_at = time.monotonic()
        box.sh(MAKE_HOSTILE, INCOMING, "", user=DROPPER)
        box.sh(MAKE_HOSTILE, STAGING, MOVED, user=DROPPER)
        box.sh(f"mv {STAGING}/hostile-* {INCOMING}/", user=DROPPER)
        snapshots = {name: snapshot(incoming / name) for name in HOSTILE}
        assert snapshots["hostile-hardlink-to-own-file.csv"].nlink == 3
        box.sh(f"echo after > {INCOMING}/hostile-after.csv", user=DROPPER)
        wait_until(
            lambda: archived(box, b"hostile-after.csv"),
            10,
            interval=0.05,
            what="hostile-after.csv archived after the hostile entries",
        )
        TIMINGS["hostile: made -> normal file archived"] = time.monotonic() - made_at
        wait_until(
            lambda: all(events(box, "entry.refused", pid, file=name) for name in HOSTILE),
            15,
            interval=0.1,
            what="every hostile entry refused",
        )
        TIMINGS["hostile: made -> each refused"] = time.monotonic() - made_at

        # A rescan has walked past the FIFO and the socket: nothing waits on them.
        dropped_at = time.monotonic()
        box.sh(f"echo during > {INCOMING}/hostile-during.csv", user=DROPPER)
        wait_until(
            lambda: archived(box, b"hostile-during.csv"),
            5,
            interval=0.05,
            what="hostile-during.csv archived among the refused entries",
        )
        TIMINGS["hostile: normal file among them archived"] = time.monotonic() - dropped_at

        # Rescans find the same entries again, and so do those after a reload:
        # each refusal is remembered, not repeated.
        wait_scans(box, pid, 3)
        count = len(events(box, "daemon.reloaded", pid))
        box.systemctl("reload", UNIT)
        wait_until(
            lambda: len(events(box, "daemon.reloaded", pid)) > count,
            10,
            interval=0.1,
            what="daemon.reloaded",
        )
        wait_scans(box, pid, 3)

        for name, word in HOSTILE.items():
            entries = box.journal("EVENT=entry.refused", f"FILE={name}")
            assert len(entries) == 1, (name, entries)
            assert word in entries[0]["REASON"], entries[0]
            assert entries[0]["_PID"] == pid
            assert entries[0]["PRIORITY"] == "4"
        for name, snap in snapshots.items():
            assert snapshot(incoming / name) == snap, f"{name} was changed"
        for suffix in ("", MOVED):
            inside = incoming / f"hostile-directory{suffix}" / INSIDE_DIRECTORY
            assert inside.read_text() == "in a dropped directory\n"
        normal = {b"hostile-after.csv", b"hostile-during.csv"}
        for folder in ("working", "archive", "failed"):
            found = regular_files(box.path(f"{DATA}/{folder}"))
            moved = {
                n for n in found if n.startswith(b"hostile-") or n == INSIDE_DIRECTORY.encode()
            }
            assert moved <= normal, f"moved into {folder}/: {moved - normal}"
        for path, marker in markers.items():
            assert box.path(path).read_text() == marker + "\n", path

        # No secret reached a file dropline wrote (archive/, failed/, working/,
        # its state, a stage's private /tmp) nor its journal.
        for marker in markers.values():
            leaked = box.sh(
                f'grep -rlF -D skip -e "$1" {DATA}/working {DATA}/archive {DATA}/failed '
                f"/var/lib/dropline {PRIVATE_TMP} || [ $? = 1 ]",
                marker,
            ).stdout
            assert leaked == "", f"{marker} leaked into {leaked}"
        journal = box.run(
            "journalctl", "--no-pager", "-o", "export", "-u", UNIT, f"--since=@{since}"
        ).stdout
        assert "EVENT=entry.refused" in journal
        for marker in markers.values():
            assert marker not in journal, f"{marker} is in the journal"
        assert not box.journal("EVENT=file.failed", f"_PID={pid}")

        # Still the same process, still archiving.
        assert_still_up(box, before)
        box.sh(f"echo later > {INCOMING}/hostile-later.csv", user=DROPPER)
        wait_until(
            lambda: archived(box, b"hostile-later.csv"),
            5,
            interval=0.05,
            what="hostile-later.csv archived",
        )
        assert_still_up(box, before)
    finally:
        if box.path(CONFIG).read_bytes() != original_config:
            # Back to the installed configuration (or the dropline fixture
            # restarts the service before the next test).
            current = box.show(UNIT, "MainPID")["MainPID"]
            count = len(events(box, "daemon.reloaded", current))
            box.put(CONFIG, original_config)
            box.systemctl("reload", UNIT)
            wait_until(
                lambda: len(events(box, "daemon.reloaded", current)) > count,
                10,
                interval=0.1,
                what="daemon.reloaded with the original configuration",
            )
        box.sh(
            f"cd {INCOMING}; rm -rf hostile-* {STAGING}; "
            f"rm -f {ROOT_SECRET} {DAEMON_SECRET} {ALICE_OWN}"
        )


def test_file_rewritten_after_drop_is_a_new_file(dropline: Container) -> None:
    """A name dropped again after its first file was archived: archived beside it, no overwrite."""
    box = dropline
    before = box.wait_active()
    box.sh(f"echo first > {INCOMING}/rewrite.csv", user=DROPPER)
    (first,) = wait_until(
        lambda: archived(box, b"rewrite.csv"), 10, interval=0.05, what="rewrite.csv archived"
    )
    assert first.name == "rewrite.csv"

    box.sh(f"echo second version > {INCOMING}/rewrite.csv", user=DROPPER)
    both = wait_until(
        lambda: len(found := archived(box, b"rewrite.csv")) == 2 and found,
        10,
        interval=0.05,
        what="the second rewrite.csv archived",
    )
    (second,) = [p for p in both if p != first]
    assert first.read_text() == "first\n", "the first file was overwritten"
    assert second.read_text() == "second version\n"
    if second.parent == first.parent:  # not across midnight: a unique suffix
        entries = box.journal("EVENT=file.archived", "FILE=rewrite.csv")
        assert len(entries) == 2, entries
        assert second.name == f"rewrite.{entries[1]['ITEM']}.csv", second.name
    assert not os.path.lexists(box.path(f"{INCOMING}/rewrite.csv"))
    assert not box.journal("EVENT=file.failed", "FILE=rewrite.csv")
    assert_still_up(box, before)


def test_file_held_open_while_written_is_claimed_complete(dropline: Container) -> None:
    """A file written, held open about a second and written again: what is archived is complete.

    With the installed settle_time (2 s) and rescan_interval (60 s) such a file
    is claimed only when its writer closes it (IN_CLOSE_WRITE).  Should it end
    in failed/ instead, the reason must say it was modified after the claim.
    """
    box = dropline
    before = box.wait_active()
    started = time.monotonic()
    box.sh(HOLD_OPEN, user=DROPPER, timeout=30)
    failed = box.path(f"{DATA}/failed/held.csv")
    ended = wait_until(
        lambda: archived(box, b"held.csv") or failed.exists(),
        15,
        interval=0.05,
        what="held.csv archived or failed",
    )
    TIMINGS["held open 1 s -> archived"] = time.monotonic() - started
    if ended is True:
        error = box.path(f"{DATA}/failed/held.csv.error.json").read_text()
        assert "modified after it was claimed" in error, error
    else:
        (path,) = ended
        assert path.read_text() == "part1\npart2\n", "archived before its writer finished"
        assert len(box.journal("EVENT=file.claimed", "FILE=held.csv")) == 1
    assert not os.path.lexists(box.path(f"{INCOMING}/held.csv"))
    assert_still_up(box, before)


def _capabilities(box: Container, pid: str) -> dict[str, int]:
    """CapEff, CapAmb... of process PID inside the container."""
    status = box.sh(f"cat /proc/{pid}/status").stdout
    return {
        key: int(value, 16)
        for key, _, value in (line.partition(":\t") for line in status.splitlines())
        if key.startswith("Cap")
    }


def test_file_kept_open_by_the_dropper_is_not_claimed_until_closed(dropline: Container) -> None:
    """The dropper closes one descriptor (IN_CLOSE_WRITE) while it holds another:
    the lease probe, with the unit's CAP_LEASE, sees the writer; the file stays
    in incoming/, logged once, and is archived whole once closed.  Only the
    daemon has CAP_LEASE: the mover (and any stage) runs without it."""
    box = dropline
    before = box.wait_active()
    go = "/run/dropline-e2e-go-kept"  # made by root, seen by the dropper
    box.sh(f"rm -f {go}")
    writer = box.popen_sh(KEPT_OPEN, go, user=DROPPER)
    try:
        wait_until(
            lambda: box.journal("EVENT=file.held_open", "FILE=kept.csv"),
            15,
            interval=0.1,
            what="file.held_open for kept.csv",
        )
        assert os.path.exists(box.path(f"{INCOMING}/kept.csv"))
        assert not archived(box, b"kept.csv")
        assert not box.journal("EVENT=lease.unavailable")
        daemon = _capabilities(box, before["MainPID"])
        assert daemon["CapEff"] & CAP_LEASE, daemon
        assert daemon["CapAmb"] == 0, daemon  # cleared at start: not passed on
        children = box.sh(f"cat /proc/{before['MainPID']}/task/*/children").stdout.split()
        assert children, "the mover runs"
        for child in children:
            assert _capabilities(box, child)["CapEff"] == 0
        box.sh(f"touch {go}")
        assert writer.wait(15) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.communicate()  # reaps it and closes its pipe
    (path,) = wait_until(
        lambda: archived(box, b"kept.csv"), 15, interval=0.05, what="kept.csv archived"
    )
    assert path.read_text() == "part1\npart2\n"
    assert len(box.journal("EVENT=file.held_open", "FILE=kept.csv")) == 1
    assert len(box.journal("EVENT=file.claimed", "FILE=kept.csv")) == 1
    box.sh(f"rm -f {go}")
    assert_still_up(box, before)


def test_odd_names_archived_verbatim_never_executed(dropline: Container) -> None:
    """A newline, an ANSI escape, shell syntax, a leading dash, bad UTF-8, 255 bytes.

    Each file goes through the installed "reports" pipeline (a command stage
    gets its path as argv) and is archived byte-identical under its own name;
    the journal shows each name escaped, once archived; no shell ran any name.
    """
    box = dropline
    before = box.wait_active()
    pid = before["MainPID"]
    contents = {name: f"odd file {i}\n" for i, name in enumerate(ODD_NAMES)}
    args = [arg for name, text in contents.items() for arg in (printf_format(name), text)]
    box.sh(DROP_PRINTF, *args, user=DROPPER)

    archive = box.path(f"{DATA}/archive")
    wait_until(
        lambda: set(ODD_NAMES) <= set(regular_files(archive)),
        30,
        interval=0.1,
        what="every odd name archived",
    )
    found = regular_files(archive)
    for name, text in contents.items():
        assert found[name].read_bytes() == text.encode(), name
    for folder in ("incoming", "working", "failed"):
        left = set(ODD_NAMES) & set(regular_files(box.path(f"{DATA}/{folder}")))
        assert not left, f"also in {folder}/: {left}"

    for shown in ODD_NAMES.values():
        done = wait_until(
            functools.partial(events, box, "file.archived", pid, file=shown),
            10,
            interval=0.1,
            what=f"file.archived of {shown}",
        )
        assert len(done) == 1, (shown, done)
        assert done[0]["PIPELINE"] == "reports"
        trail = box.journal(f"ITEM={done[0]['ITEM']}")
        assert all(e["FILE"] == shown for e in trail), trail
        assert {e["STAGE"] for e in trail if e["EVENT"] == "stage.succeeded"} == {
            "checksum",
            "count-lines",
        }
        assert not box.journal("EVENT=entry.refused", f"FILE={shown}")
    assert_never_executed(box)
    assert_still_up(box, before)
