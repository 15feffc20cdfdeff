"""Read-only access for the group dropline-readers, as `make install` sets it up.

A member who is neither root, nor automation, nor a dropper runs `status`,
`top --once` and `history` against the live daemon and sees the files just
dropped: before and after a restart, after systemd chowned the state tree
(which drops every ACL in it), and while the daemon is stopped.  A user outside
the group is told which group to join (exit 1).  A member writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from ..harness import wait_until
from .container import (
    CONFIG,
    DATA,
    DROPPER,
    MEASURED,
    STATE_DIR,
    UNIT,
    Container,
    archived_exactly_once,
    drop_script,
)

READERS = "dropline-readers"
READER = "rhea"  # a member of dropline-readers and of no other group of dropline's
OUTSIDER = "oscar"  # a member of no group of dropline's
DROPLINE = "/usr/local/bin/dropline"  # the link on PATH, as a user runs it
STATE_DB = f"{STATE_DIR}/state.db"


@pytest.fixture(scope="module")
def users(container: Container) -> None:
    """The member and the outsider, made once."""
    container.sh(
        f"id -u {READER} >/dev/null 2>&1 || useradd --groups {READERS} {READER}; "
        f"id -u {OUTSIDER} >/dev/null 2>&1 || useradd {OUTSIDER}"
    )


def as_user(box: Container, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`dropline ARGS` as USER, with the groups of a fresh login (runuser)."""
    return box.run("runuser", "-u", user, "--", DROPLINE, *args, "--config", CONFIG, check=False)


def read_json(box: Container, user: str | None, *args: str) -> Any:
    """`dropline ARGS --json` as USER (root when None); must succeed."""
    if user is None:
        done = box.run(DROPLINE, *args, "--json", "--config", CONFIG, check=False)
    else:
        done = as_user(box, user, *args, "--json")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return json.loads(done.stdout)


def states_of(box: Container, user: str | None, pattern: str) -> dict[str, str]:
    """What `history PATTERN` lists, as USER: {file: state}; {} when nothing is found yet."""
    args = ("history", pattern, "--per-page", "100", "--json")
    if user is None:
        done = box.run(DROPLINE, *args, "--config", CONFIG, check=False)
    else:
        done = as_user(box, user, *args)
    if done.returncode == 1 and done.stderr.startswith("dropline: error: no "):
        return {}  # not yet in the state database
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return {item["file"]: item["state"] for item in json.loads(done.stdout)["items"]}


def reads_what_was_dropped(box: Container, tag: str) -> None:
    """Files dropped now appear to the member, through each of the three commands."""
    props = box.wait_active()
    prefix, count = f"readers-{tag}-", 4
    box.sh(drop_script(count, prefix, ".txt"), user=DROPPER)
    archived_exactly_once(box, count, prefix, ".txt")
    names = {f"{prefix}{i}.txt" for i in range(count)}
    # Once root sees every end committed, the member must see it too: a stale
    # view of the database (a snapshot that misses the daemon's WAL) would not.
    wait_until(
        lambda: states_of(box, None, f"{prefix}*") == dict.fromkeys(names, "archived"),
        30,
        interval=0.1,
        what=f"{prefix}* archived in the state",
    )
    assert states_of(box, READER, f"{prefix}*") == dict.fromkeys(names, "archived")

    one = as_user(box, READER, "history", f"{prefix}0.txt")
    assert one.returncode == 0, one.stderr
    assert f"{prefix}0.txt  item " in one.stdout and "archived in archive/" in one.stdout

    pid = int(props["MainPID"])
    status = read_json(box, READER, "status")
    assert status["daemon"]["running"] and status["daemon"]["pid"] == pid, status["daemon"]
    assert status["counts"]["archived"] >= count
    text = as_user(box, READER, "status")
    assert text.returncode == 0 and f"dropline running (pid {pid})" in text.stdout, text

    top = read_json(box, READER, "top", "--once")
    assert top["daemon"]["pid"] == pid
    assert [p["pipeline"] for p in top["pipelines"]] == ["reports", "passthrough"]
    frame = as_user(box, READER, "top", "--once")
    assert frame.returncode == 0 and f"dropline running (pid {pid})" in frame.stdout, frame


def test_a_member_reads_the_state_and_still_after_restarts(
    dropline: Container, users: None
) -> None:
    """status, top --once and history as a member: as installed, after a restart,
    after a restart that chowned the state tree, and while the daemon is stopped."""
    box = dropline
    reads_what_was_dropped(box, "installed")

    box.systemctl("restart", UNIT)
    reads_what_was_dropped(box, "restarted")

    # A state directory not owned by automation (restored from a backup as root,
    # say): the start chowns the whole tree and drops its ACLs; ExecStartPre=
    # puts them back.
    box.systemctl("stop", UNIT)
    box.run("chown", "-R", "root:root", STATE_DIR)
    box.systemctl("start", UNIT)
    reads_what_was_dropped(box, "chowned")
    owner = box.run("stat", "-c", "%U:%G %a", STATE_DIR).stdout.split()
    assert owner == ["automation:automation", "750"], owner

    # Stopped: SQLite deleted -wal and -shm at the clean stop; ExecStopPost= made
    # them again, which a member can read but not create.
    box.systemctl("stop", UNIT)
    try:
        status = read_json(box, READER, "status")
        assert status["daemon"]["running"] is False
        assert status["counts"] == read_json(box, None, "status")["counts"]
        names = {f"readers-chowned-{i}.txt" for i in range(4)}
        assert states_of(box, READER, "readers-chowned-*") == dict.fromkeys(names, "archived")
        assert as_user(box, READER, "top", "--once").returncode == 0
    finally:
        box.systemctl("start", UNIT)
        box.wait_active()


def test_a_member_sees_what_waits_in_incoming(dropline: Container, users: None) -> None:
    """A file its dropper still holds open waits in incoming/: status and top, as a
    member, count it (they list incoming/ through the group's ACL entry)."""
    box = dropline
    name, go = "readers-held.txt", "/run/dropline-e2e-go-readers"
    box.run("rm", "-f", go)
    hold = (
        f"exec 3> {DATA}/incoming/{name}; echo held >&3; "
        'while [ ! -e "$1" ]; do sleep 0.05; done; exec 3>&-'
    )
    writer = box.popen_sh(hold, go, user=DROPPER)
    try:
        wait_until(
            lambda: box.path(f"{DATA}/incoming/{name}").exists(),
            15,
            interval=0.05,
            what=f"{name} in incoming/",
        )
        status = read_json(box, READER, "status")
        assert status["counts"]["incoming"] >= 1 and status["backlog"]["incoming"] >= 1, status
        top = read_json(box, READER, "top", "--once")
        assert top["incoming"]["count"] >= 1, top["incoming"]
        box.run("touch", go)
        assert writer.wait(15) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.communicate()
        box.run("rm", "-f", go)
    wait_until(
        lambda: states_of(box, READER, name) == {name: "archived"},
        30,
        interval=0.1,
        what=f"{name} archived, as the member sees it",
    )


def test_a_member_follows_the_daemon_while_it_writes(dropline: Container, users: None) -> None:
    """While a burst drains, the member's counts only grow, and end where root's do."""
    box = dropline
    count = 400
    base = read_json(box, None, "status")["counts"]["archived"]
    dropper = box.popen_sh(drop_script(count, "readers-burst-", ".csv"), user=DROPPER)
    seen: list[int] = []
    started = time.monotonic()
    try:
        while True:
            seen.append(read_json(box, READER, "status")["counts"]["archived"])
            if seen[-1] >= base + count:
                break
            assert time.monotonic() - started < 120, f"the member saw {seen}"
        assert dropper.wait(30) == 0
    finally:
        if dropper.poll() is None:
            dropper.kill()
        dropper.communicate()
    assert seen == sorted(seen), seen
    archived_exactly_once(box, count, "readers-burst-", ".csv")
    assert read_json(box, READER, "status")["counts"] == read_json(box, None, "status")["counts"]
    MEASURED.append(
        f"readers: {len(seen)} reads of status by a member while {count} files drained "
        f"(archived seen: {', '.join(str(n - base) for n in seen)})"
    )


def test_a_user_outside_the_group_is_told_which_group_to_join(
    dropline: Container, users: None
) -> None:
    """One line naming the database and the group, exit 1, no traceback; a member whose
    session began before they joined is told to log in again."""
    box = dropline
    for user in (OUTSIDER, DROPPER):
        for args in (["status"], ["top", "--once"], ["history", "readers-installed-0.txt"]):
            done = as_user(box, user, *args)
            assert (done.returncode, done.stdout) == (1, ""), (args, done)
            assert done.stderr.splitlines() == [
                f"dropline: error: permission denied: cannot reach the state database "
                f"{STATE_DB} (run as root, or as a member of the group {READERS}: "
                f"usermod -aG {READERS} {user}, then log in again)"
            ], (args, done.stderr)
    stale = box.run(
        "setpriv", f"--reuid={READER}", f"--regid={READER}", "--clear-groups",
        DROPLINE, "status", "--config", CONFIG,
        check=False,
    )  # fmt: skip
    assert stale.returncode == 1, stale
    assert stale.stderr.splitlines() == [
        f"dropline: error: permission denied: cannot reach the state database {STATE_DB} "
        f"({READER} joined the group {READERS} after logging in: log in again)"
    ], stale.stderr


# Each line: what a member tries; none may succeed.  The folders' listings and the
# configuration's reading must (a control: the refusals are the ACLs' doing).
WRITES = f"""
try() {{ if "$@" 2>/dev/null; then echo "ALLOWED: $*"; fi; }}
ls {DATA}/incoming {DATA}/working >/dev/null
cat {CONFIG} >/dev/null
try sh -c ': >> {STATE_DB}'
try sh -c ': >> {STATE_DB}-wal'
try sh -c ': >> {STATE_DB}-shm'
try touch {STATE_DIR}/readers-new
try ls {STATE_DIR}
try flock -n {STATE_DIR} true
try python3 -c "import sqlite3; sqlite3.connect('{STATE_DB}').execute('PRAGMA user_version = 999')"
try python3 -c "import sqlite3; sqlite3.connect('{STATE_DB}').execute('DELETE FROM items')"
try sh -c ': >> {CONFIG}'
try touch {DATA}/incoming/readers-new {DATA}/working/readers-new
try touch {DATA}/archive/readers-new {DATA}/failed/readers-new
try cat "$1"
echo done
"""


def test_a_member_writes_nothing(dropline: Container, users: None) -> None:
    """Not the state database (nor its -wal and -shm), not its folder (nor its lock),
    not the configuration, not the data folders; nor reads a file in them."""
    box = dropline
    box.sh(drop_script(1, "readers-private-", ".txt"), user=DROPPER)
    (archived,) = archived_exactly_once(box, 1, "readers-private-", ".txt")
    inside = "/" + str(archived.relative_to(box.root))

    def user_version() -> str:
        script = (
            f"import sqlite3; db = sqlite3.connect('file:{STATE_DB}?mode=ro', uri=True); "
            "print(db.execute('PRAGMA user_version').fetchone()[0])"
        )
        return box.run("python3", "-c", script).stdout.strip()

    version = user_version()
    done = box.sh(WRITES, inside, user=READER, check=False)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stdout + done.stderr
    assert user_version() == version
    assert not os.path.lexists(box.path(f"{STATE_DIR}/readers-new"))
    # The commands that change things refuse a member, and say why, not that no
    # daemon runs (one does).
    name = archived.name
    for args in (("reload",), ("retry", name), ("replay", name), ("prune", "--older-than", "1d")):
        done = as_user(box, READER, *args)
        assert done.returncode == 1, (args, done.stderr)
        assert "permission denied" in done.stderr.lower(), (args, done.stderr)
        assert "no dropline daemon runs" not in done.stderr and "Traceback" not in done.stderr


def test_a_configuration_of_an_earlier_install_is_readable_by_members(
    dropline: Container, users: None
) -> None:
    """A configuration an earlier install wrote 0640 root:automation: tmpfiles (make
    install, every boot) gives the group a read entry on it."""
    box = dropline
    box.sh(f"chown root:automation {CONFIG} && chmod 0640 {CONFIG}")
    try:
        box.run("systemd-tmpfiles", "--create", "--prefix=/etc/dropline",
                "/etc/tmpfiles.d/dropline.conf")  # fmt: skip
        assert as_user(box, READER, "status").returncode == 0
        outside = as_user(box, OUTSIDER, "status")
        assert (outside.returncode, outside.stderr) == (
            1,
            f"dropline: error: permission denied: {CONFIG}\n",
        )
    finally:
        box.sh(f"chown root:root {CONFIG} && chmod 0644 {CONFIG}")
