"""Power-loss ordering: each state change is durable before the next step depends on it.

The daemon runs under ``strace -f -y``; the trace of its system calls is parsed into
an ordered list of events and checked against the group-commit protocol
(``lifecycle/claim.py``, ``lifecycle/finish.py``):

claim:  commit of the "claiming" rows -> rename incoming/NAME -> working/
        -> fsync working/ and incoming/ -> the claim recorded ("active")
        -> the stage's start recorded -> the stage runs (execve);
finish: commit of the destination ("finishing") -> for failed/: NAME.error.json
        written, fsynced, renamed into place -> rename working/ -> archive/DAY or
        failed/ -> fsync of that folder, of working/, and of archive/ when DAY is
        new -> the end recorded.  When archive/ is on another filesystem (a tmpfs
        in a private mount namespace here), the rename is a copy: written, fsynced,
        renamed into place, its folder fsynced, and only then the source unlinked.

A commit is SQLite's fsync (or fdatasync) of the ``-wal`` file after writing frames
to it; which commit is which is told by order and by what its frames hold (the
row's name and state), so a commit is proved to record this very file.  What the
renames did (the claim, the end) is recorded without an fsync: the renames are on
disk already, and a power loss that takes the record back leaves the intent before
it, which recovery completes.  So those steps are checked at the write of the WAL
page in which the file's row first says so (its name, its working name, its
pipeline and its state are stored side by side in the row).  Every
event has the position of the line where the call started and of the line where it
returned (``<unfinished ...>`` / ``<... resumed>``); "A before B" means A had
returned before B started.  A checker that cannot fail proves nothing: synthetic
traces in the wrong order must be caught.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import REPO, Tree, make_tree, wait_until

STRACE = shutil.which("strace")
NO_STRACE = "strace is not installed: these checks read the daemon's system calls with it"
needs_strace = pytest.mark.skipif(STRACE is None, reason=NO_STRACE)

TRACED = (
    "openat,renameat2,rename,renameat,fsync,fdatasync,unlinkat,pwrite64,write,mkdirat,execve,"
    "sendfile"
)
STAGE_NAME = "refuse-bad-input"

PIPELINES = f"""
- name: keep
  match: "*.txt"
- name: reject
  match: "*.bad"
  stages:
    - name: {STAGE_NAME}
      command: ["/bin/sh", "-c", "exit 65", "sh", "{{path}}"]
"""


# --- reading strace's output -----------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One system call, placed by the trace line where it started and where it returned."""

    start: int
    end: int
    pid: int
    call: str
    kind: str  # rename, sync, write, mkdir, unlink, open, exec
    ok: bool
    injected: bool = False
    path: str = ""  # what it acted on (a rename's source)
    target: str = ""  # a rename's destination
    data: bytes = b""  # what a write wrote
    argv: tuple[str, ...] = ()  # an execve's arguments


_KINDS = {
    "rename": "rename",
    "renameat": "rename",
    "renameat2": "rename",
    "fsync": "sync",
    "fdatasync": "sync",
    "write": "write",
    "pwrite64": "write",
    "mkdir": "mkdir",
    "mkdirat": "mkdir",
    "unlink": "unlink",
    "unlinkat": "unlink",
    "open": "open",
    "openat": "open",
    "execve": "exec",
    "sendfile": "write",
    "sendfile64": "write",
}
_PREFIX = re.compile(r"(?:(?P<pid>\d+)\s+)?(?:\d{2}:\d{2}:\d{2}(?:\.\d+)?\s+)?(?P<rest>.*)", re.S)
_START = re.compile(r"(?P<call>\w+)\((?P<body>.*)", re.S)
_RESUMED = re.compile(r"<\.\.\. (?P<call>\w+) resumed>(?P<body>.*)", re.S)
_UNFINISHED = "<unfinished ...>"
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(?:\.\.\.)?', re.S)
_FD = re.compile(r"(?:-?\d+|AT_FDCWD)<((?:[^>\\]|\\.)*)>(?:\(deleted\))?", re.S)
_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "e": 27}


def parse_strace(text: str) -> list[Event]:
    """The events of an ``strace -f -y`` log, in the order their calls returned.

    A call split by another thread's line (``<unfinished ...>`` then
    ``<... call resumed>``) is joined: it starts at its first line, ends at its second.
    """
    events: list[Event] = []
    pending: dict[int, tuple[str, str, int]] = {}
    for index, line in enumerate(text.splitlines()):
        prefix = _PREFIX.fullmatch(line)
        pid = int(prefix["pid"]) if prefix and prefix["pid"] else 0
        rest = prefix["rest"] if prefix else line
        if rest.startswith(("+++", "---")):
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            started = pending.pop(pid, None)
            if started is None or started[0] != resumed["call"]:
                continue
            call, head, start = started
            body = head + resumed["body"]
        else:
            begun = _START.match(rest)
            if begun is None:
                continue
            call, body, start = begun["call"], begun["body"], index
            if body.endswith(_UNFINISHED):
                pending[pid] = (call, body[: -len(_UNFINISHED)], index)
                continue
        event = _event(call, body, pid, start, index)
        if event is not None:
            events.append(event)
    return events


def _event(call: str, body: str, pid: int, start: int, end: int) -> Event | None:
    """The event of one complete call (BODY: its arguments, ") = ", its result)."""
    kind = _KINDS.get(call)
    args_text, sep, result = body.rpartition(") = ")
    args = _split_args(args_text)
    if kind is None or not sep or not args:
        return None
    path, target, data = "", "", b""
    argv: tuple[str, ...] = ()
    if call in ("renameat", "renameat2") and len(args) >= 4:
        path = _join(_fd_path(args[0]), _string(args[1]))
        target = _join(_fd_path(args[2]), _string(args[3]))
    elif call == "rename" and len(args) >= 2:
        path, target = _string(args[0]), _string(args[1])
    elif kind in ("sync", "write"):
        path = _fd_path(args[0])
        data = _unescape(_quoted(args[1])) if kind == "write" and len(args) > 1 else b""
    elif call in ("mkdirat", "unlinkat", "openat") and len(args) >= 2:
        path = _join(_fd_path(args[0]), _string(args[1]))
    elif call == "execve" and len(args) >= 2:
        path = _string(args[0])
        argv = tuple(os.fsdecode(_unescape(m[1])) for m in _STRING.finditer(args[1]))
    else:
        path = _string(args[0])
    return Event(
        start=start,
        end=end,
        pid=pid,
        call=call,
        kind=kind,
        ok=re.match(r"\s*\d", result) is not None,
        injected="(INJECTED)" in result,
        path=path,
        target=target,
        data=data,
        argv=argv,
    )


def _quoted(arg: str) -> str:
    found = _STRING.fullmatch(arg)
    return found[1] if found else ""


def _split_args(text: str) -> list[str]:
    """Split strace's argument list at its top-level commas (not in strings, [], {}, fd<path>)."""
    parts: list[str] = []
    depth = 0
    begin = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"' or (c == "<" and i > 0 and text[i - 1].isalnum()):
            close = '"' if c == '"' else ">"
            i += 1
            while i < len(text) and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[begin:i].strip())
            begin = i + 1
        i += 1
    if text[begin:].strip():
        parts.append(text[begin:].strip())
    return parts


def _unescape(text: str) -> bytes:
    """The bytes behind strace's quoting: \\n, \\", \\\\, octal \\ooo and hex \\xhh."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out += c.encode("latin-1") if ord(c) < 256 else c.encode()
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", text[i + 1 : i + 4])
            assert digits is not None
            out.append(int(digits[0], 8) & 0xFF)
            i += 1 + len(digits[0])
        else:
            out.append(_ESCAPES.get(nxt, ord(nxt) if ord(nxt) < 256 else 63))
            i += 2
    return bytes(out)


def _string(arg: str) -> str:
    return os.fsdecode(_unescape(_quoted(arg)))


def _fd_path(arg: str) -> str:
    found = _FD.fullmatch(arg)
    return os.fsdecode(_unescape(found[1])) if found else ""


def _join(directory: str, name: str) -> str:
    if name.startswith("/") or not directory:
        return name
    return directory.rstrip("/") + "/" + name


# --- checking the protocol's order -----------------------------------------------


@dataclass(frozen=True)
class Commit:
    """A durable SQLite transaction: frames written to the WAL, then its fsync."""

    start: int
    end: int
    frames: bytes


@dataclass(frozen=True)
class Violation:
    """A step that did not wait for the durability of the step before it."""

    rule: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.file}: {self.message}"


@dataclass
class Journey:
    """One file's way through the folders, as the trace shows it."""

    name: str
    claim: Event
    stages: list[Event] = field(default_factory=list)
    arrival: Event | None = None  # the rename that put it under its final name
    departure: Event | None = None  # what took it out of working/ (the same rename, or unlink)

    @property
    def destination(self) -> str:
        return self.arrival.target if self.arrival else ""

    @property
    def copied(self) -> bool:
        return self.departure is not None and self.departure.kind == "unlink"


def find_commits(events: Sequence[Event], wal: str) -> list[Commit]:
    """The syncs of WAL that made frames durable (a sync with no new frame is a checkpoint's)."""
    commits: list[Commit] = []
    frames = bytearray()
    for event in sorted(events, key=lambda e: e.end):
        if not event.ok or event.path != wal:
            continue
        if event.kind == "write":
            frames += event.data
        elif event.kind == "sync":
            if frames:
                commits.append(Commit(event.start, event.end, bytes(frames)))
            frames = bytearray()
    return commits


def check_order(
    events: Sequence[Event],
    data_dir: str,
    wal: str,
    *,
    stage_name: str = "",
    error_document_dir_synced: bool = False,
) -> tuple[dict[str, Journey], list[Violation]]:
    """Follow every claimed file through EVENTS; return the journeys and the violations.

    STAGE_NAME, if given, must be in a commit between the claim's and each stage's
    start (the attempt recorded before it runs).  ERROR_DOCUMENT_DIR_SYNCED also
    requires failed/ to be fsynced between NAME.error.json's rename into place and
    the file's own rename beside it.
    """
    incoming, working = f"{data_dir}/incoming", f"{data_dir}/working"
    archive, failed = f"{data_dir}/archive", f"{data_dir}/failed"
    done_ok = [e for e in events if e.ok]
    commits = find_commits(done_ok, wal)
    wal_writes = sorted(
        (e for e in done_ok if e.kind == "write" and e.path == wal), key=lambda e: e.start
    )
    renames = [e for e in done_ok if e.kind == "rename"]
    violations: list[Violation] = []
    journeys: dict[str, Journey] = {}

    def last_commit_before(at: int) -> Commit | None:
        before = [c for c in commits if c.end < at]
        return before[-1] if before else None

    def first_commit_after(at: int) -> Commit | None:
        return next((c for c in commits if c.start > at), None)

    def synced(path: str, after: int, before: int) -> bool:
        return any(
            e.kind == "sync" and e.path == path and e.start > after and e.end < before
            for e in done_ok
        )

    def first_record(at: int, name: str, working_name: str, *states: bytes) -> Event | None:
        """The first write to the WAL after AT of a page where the file's row is in
        one of STATES (the row's name, working name, pipeline and state are side
        by side in the page)."""
        row = re.compile(
            re.escape(os.fsencode(name))
            + re.escape(os.fsencode(working_name))
            + rb".{0,64}?(?:"
            + b"|".join(states)
            + b")",
            re.DOTALL,
        )
        return next((w for w in wal_writes if w.start > at and row.search(w.data)), None)

    for claim in renames:
        if os.path.dirname(claim.path) != incoming or os.path.dirname(claim.target) != working:
            continue
        name = os.path.basename(claim.path)
        wname = os.path.basename(claim.target)
        journey = journeys[name] = Journey(name, claim)

        def bad(rule: str, message: str, name: str = name) -> None:
            violations.append(Violation(rule, name, message))

        # 1. The intention ("claiming" row) is committed before the rename.
        intent = last_commit_before(claim.start)
        if intent is None or os.fsencode(name) not in intent.frames:
            bad("claim-intent", "renamed into working/ before a commit recorded its claim")
        elif b"claiming" not in intent.frames:
            bad("claim-intent", "the commit before its claim does not record it as 'claiming'")

        # 2. The rename is durable (both folders fsynced) before the claim is recorded
        # (its row "active", or "finishing" for a file with no stage), and a
        # durable commit follows.
        # Looked for from the intent on: a claim recorded before its rename is caught
        # as such, not matched with a later page that still holds the row.
        since = intent.end if intent is not None else claim.start
        done = first_record(since, name, wname, b"active", b"finishing")
        if done is None:
            bad("claim-synced", "no write to the state database recorded the claim")
            continue
        if done.start < claim.end:
            bad("claim-synced", "the claim was recorded before the rename returned")
        for folder in (working, incoming):
            if not synced(folder, claim.end, done.start):
                bad(
                    "claim-synced",
                    f"{folder} was not fsynced between the rename and the record of the claim",
                )
        if first_commit_after(done.start) is None:
            bad("claim-synced", "the record of the claim was never made durable")

        # 3. Stages run only after the claim is recorded, and after their start is.
        journey.stages = [
            e
            for e in done_ok
            if e.kind == "exec"
            and any(
                os.path.basename(a) == wname and os.path.basename(os.path.dirname(a)) == "working"
                for a in e.argv
            )
        ]
        for stage in journey.stages:
            if not done.end < stage.start:
                bad("stage-after-commit", "a stage ran before the claim was recorded")
            # The attempt's start is written to the WAL before the stage runs: a
            # crash of the process cannot lose it.  (It is fsynced too only for a
            # stage declared idempotent: false, tests/loop/test_durability.py.)
            recorded = [
                w
                for w in wal_writes
                if done.end < w.start
                and w.end < stage.start
                and (not stage_name or stage_name.encode() in w.data)
            ]
            if not recorded:
                bad("stage-recorded", "a stage ran before a commit recorded its start")

        # 4. The file leaves working/: renamed, or (to another filesystem) copied, then unlinked.
        def at_end(e: Event) -> bool:
            return e.target.startswith((archive + "/", failed + "/"))

        departure = next(
            (
                e
                for e in done_ok
                if e.start > claim.end
                and e.path == claim.target
                and ((e.kind == "rename" and at_end(e)) or e.kind == "unlink")
            ),
            None,
        )
        if departure is None:
            bad("finish-intent", "never left working/ for archive/ or failed/")
            continue
        arrival = departure
        if departure.kind == "unlink":
            placed_copies = [
                e
                for e in renames
                if claim.end < e.start
                and e.end < departure.start
                and at_end(e)
                and os.path.dirname(e.path) == os.path.dirname(e.target)
                and not e.target.endswith(".error.json")
            ]
            if not placed_copies:
                bad("finish-intent", "unlinked from working/ with no copy renamed into place")
                continue
            arrival = placed_copies[-1]
        journey.arrival, journey.departure = arrival, departure
        final_dir, final_name = os.path.split(arrival.target)
        parent = os.path.dirname(final_dir)
        made = [
            e
            for e in done_ok
            if e.kind == "mkdir" and e.path == final_dir and e.end < arrival.start
        ]

        # The destination is committed before the file appears there: by a
        # durable commit after its last stage (other commits, of other files,
        # may come between it and the move while the mover works).
        after = max([done.end, *(s.end for s in journey.stages)])
        chosen = next(
            (
                c
                for c in reversed(commits)
                if after < c.start
                and c.end < arrival.start
                and b"finishing" in c.frames
                and os.fsencode(final_name) in c.frames
            ),
            None,
        )
        if chosen is None:
            bad(
                "finish-intent",
                f"moved to {arrival.target} before a commit recorded that destination "
                "('finishing' with its name)",
            )

        # For failed/: the reason is in place, durably written, before the file.
        if final_dir == failed:
            document = f"{failed}/{final_name}.error.json"
            placed = [e for e in renames if e.target == document and e.end < arrival.start]
            if not placed:
                bad("error-document", f"moved into failed/ before {document} was in place")
            else:
                tmp = placed[-1].path
                writes = [e for e in done_ok if e.kind == "write" and e.path == tmp]
                written = [e for e in writes if e.end < placed[-1].start]
                if not written or len(written) != len(writes):
                    bad("error-document", f"{document} renamed into place before it was written")
                elif not synced(tmp, written[-1].end, placed[-1].start):
                    bad("error-document", f"{document} renamed into place before its fsync")
                if error_document_dir_synced and not synced(failed, placed[-1].end, arrival.start):
                    bad(
                        "error-document-dir",
                        f"failed/ not fsynced between {document}'s rename and the file's",
                    )

        # A copy: written, fsynced, renamed into place, its folder durable, then the source goes.
        if arrival is not departure:
            writes = [e for e in done_ok if e.kind == "write" and e.path == arrival.path]
            if not writes or writes[-1].end > arrival.start:
                bad("copy", f"{arrival.target} renamed into place before it was written")
            elif not synced(arrival.path, writes[-1].end, arrival.start):
                bad("copy", f"{arrival.target} renamed into place before the copy was fsynced")
            if not synced(final_dir, arrival.end, departure.start):
                bad("copy-synced", f"source unlinked from working/ before {final_dir} was fsynced")
            if made and not synced(parent, made[-1].end, departure.start):
                bad(
                    "copy-new-folder",
                    f"{final_dir} is new, and the source was unlinked from working/ before "
                    f"{parent} was fsynced",
                )

        # After the move: the folders it touched are fsynced before the end is
        # recorded (the first page written after the move where the file's row
        # says so: the loop may record other files in between).
        outcome = b"failed" if final_dir == failed else b"archived"
        final = first_record(departure.end, name, wname, outcome)
        if final is None:
            bad("finish-synced", "no write to the state database recorded the end")
            continue
        for folder, since in ((final_dir, arrival.end), (working, departure.end)):
            if not synced(folder, since, final.start):
                bad(
                    "finish-synced",
                    f"{folder} was not fsynced between the move and the record of the end",
                )
        if made and not synced(parent, made[-1].end, final.start):
            bad(
                "new-folder",
                f"{final_dir} was created but its parent was not fsynced before the commit",
            )
    return journeys, violations


# --- running the daemon under strace -----------------------------------------------


@dataclass(frozen=True)
class TracedRun:
    """A daemon run under strace, and what the trace says about it."""

    tree: Tree
    returncode: int
    output: str
    events: list[Event]
    data_dir: str
    wal: str

    def check(
        self, *, error_document_dir_synced: bool = False
    ) -> tuple[dict[str, Journey], list[Violation]]:
        """The journeys and violations in this run's trace (stages named STAGE_NAME)."""
        return check_order(
            self.events,
            self.data_dir,
            self.wal,
            stage_name=STAGE_NAME,
            error_document_dir_synced=error_document_dir_synced,
        )


def run_traced(
    tree: Tree,
    *strace_args: str,
    wrapper: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> TracedRun:
    """Run ``dropline run --exit-when-idle`` on TREE under strace and parse the trace.

    WRAPPER, if given, is the command that runs strace (for a private mount namespace).
    """
    assert STRACE is not None
    log = tree.root / "strace.log"
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DROPLINE_CRASH_AT"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra_env or {})
    command = [
        *wrapper,
        STRACE,
        "-f",
        "-tt",
        "-y",
        "-s",
        "8192",
        "-e",
        f"trace={TRACED}",
        *strace_args,
        "-o",
        str(log),
        sys.executable,
        "-m",
        "dropline",
        "run",
        "--config",
        str(tree.config),
        "--exit-when-idle",
    ]
    result = subprocess.run(
        command,
        cwd=tree.root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    return TracedRun(
        tree=tree,
        returncode=result.returncode,
        output=output,
        events=parse_strace(log.read_text(encoding="latin-1")),
        data_dir=str(tree.data.resolve()),
        wal=str(tree.state_db.resolve()) + "-wal",
    )


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> TracedRun:
    """Two files archived into a new date folder and one failed by a stage, under strace."""
    if STRACE is None:
        pytest.skip(NO_STRACE)
    tree = make_tree(tmp_path_factory.mktemp("ordering"))
    tree.write_config(PIPELINES, archive_layout="daily")
    for name in ("alpha.txt", "gamma.txt", "beta.bad"):
        (tree.incoming / name).write_bytes(name.encode() + b"\n")
    run = run_traced(tree)
    assert run.returncode == 0, run.output[-4000:]
    assert set(tree.archived()) == {"alpha.txt", "gamma.txt"}, run.output[-4000:]
    assert set(tree.failed_files()) == {"beta.bad"}
    assert _states(tree) == END_STATES
    return run


END_STATES = {b"alpha.txt": "archived", b"gamma.txt": "archived", b"beta.bad": "failed"}


def _states(tree: Tree) -> dict[bytes, str]:
    """Each file's state in the database, by its name in incoming/."""
    return {bytes(name): str(state) for name, state in tree.query("SELECT name, state FROM items")}


# Runs strace (and the daemon) in a private mount namespace with a tmpfs on "$1".
_MOUNT_TMPFS = 'mount -t tmpfs -o mode=0750 tmpfs "$1" && shift && exec "$@"'


UNSHARE = shutil.which("unshare")


def _why_no_private_mount() -> str:
    """Why a tmpfs cannot be mounted in a private mount namespace here ("" when it can)."""
    if UNSHARE is None:
        return "unshare is not installed"
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run(
            [UNSHARE, "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$1"', "sh", scratch],
            capture_output=True,
            timeout=10,
            check=False,
        )
    if probe.returncode != 0:
        return "cannot mount a tmpfs in a private mount namespace (needs root): " + (
            probe.stderr.decode("utf-8", "replace").strip()
        )
    return ""


@pytest.fixture(scope="module")
def traced_across(tmp_path_factory: pytest.TempPathFactory) -> TracedRun:
    """The same files with archive/ on its own filesystem (a tmpfs), so archiving is a copy."""
    if STRACE is None:
        pytest.skip(NO_STRACE)
    why = _why_no_private_mount()
    if why:
        pytest.skip(why)
    tree = make_tree(tmp_path_factory.mktemp("across"))
    tree.write_config(PIPELINES, archive_layout="daily")
    for name in ("alpha.txt", "gamma.txt", "beta.bad"):
        (tree.incoming / name).write_bytes(name.encode() + b"\n")
    assert UNSHARE is not None
    wrapper = [UNSHARE, "-m", "sh", "-c", _MOUNT_TMPFS, "sh", str(tree.archive)]
    run = run_traced(tree, wrapper=wrapper)
    assert run.returncode == 0, run.output[-4000:]
    assert not list(tree.archive.iterdir())  # the tmpfs went with its namespace
    assert set(tree.failed_files()) == {"beta.bad"}
    assert _states(tree) == END_STATES
    return run


def _report(violations: Sequence[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


# --- the real daemon -----------------------------------------------------------------


@needs_strace
def test_trace_follows_every_file(traced: TracedRun) -> None:
    """The trace shows each file claimed and moved to its end, a stage run and a new day folder."""
    journeys, _ = traced.check()
    assert set(journeys) == {"alpha.txt", "gamma.txt", "beta.bad"}
    archive = f"{traced.data_dir}/archive"
    for name in ("alpha.txt", "gamma.txt"):
        destination = journeys[name].destination
        assert os.path.dirname(os.path.dirname(destination)) == archive, destination
        assert not journeys[name].stages
    assert journeys["beta.bad"].destination == f"{traced.data_dir}/failed/beta.bad"
    assert len(journeys["beta.bad"].stages) == 1
    day = os.path.dirname(journeys["alpha.txt"].destination)
    assert any(e.kind == "mkdir" and e.ok and e.path == day for e in traced.events)
    assert len(find_commits(traced.events, traced.wal)) >= 6


@needs_strace
def test_claim_is_committed_before_the_rename(traced: TracedRun) -> None:
    """The commit of the 'claiming' rows has returned before incoming/NAME is renamed."""
    _, violations = traced.check()
    assert not [v for v in violations if v.rule == "claim-intent"], _report(violations)


@needs_strace
def test_claim_rename_is_synced_before_its_commit(traced: TracedRun) -> None:
    """working/ and incoming/ are fsynced after the renames and before the claim's commit."""
    _, violations = traced.check()
    assert not [v for v in violations if v.rule == "claim-synced"], _report(violations)


@needs_strace
def test_stage_runs_after_the_claim_and_its_start_are_committed(traced: TracedRun) -> None:
    """The stage's execve comes after the claim's commit and the commit of the attempt."""
    _, violations = traced.check()
    rules = {"stage-after-commit", "stage-recorded"}
    assert not [v for v in violations if v.rule in rules], _report(violations)


@needs_strace
def test_finish_is_committed_synced_and_committed_again_in_order(traced: TracedRun) -> None:
    """Destination committed, error.json durable, move, folders fsynced, then the end committed."""
    _, violations = traced.check()
    rules = {"finish-intent", "error-document", "new-folder", "finish-synced"}
    assert not [v for v in violations if v.rule in rules], _report(violations)


@needs_strace
def test_error_document_rename_is_durable_before_the_file_joins_it(traced: TracedRun) -> None:
    """failed/ is fsynced between NAME.error.json's rename into place and NAME's own rename.

    Until then a power loss may keep the file in failed/ without its reason beside it
    (no ordering between two renames is promised before the folder's fsync), and
    recovery, finding the file already moved, does not write the reason again.
    """
    _, violations = traced.check(error_document_dir_synced=True)
    assert not [v for v in violations if v.rule == "error-document-dir"], _report(violations)


@needs_strace
def test_destination_chosen_again_is_committed_before_the_move(tmp_path: Path) -> None:
    """When the chosen name is taken at the rename, the new name is committed before moving.

    strace makes the finish rename fail with EEXIST once (as if someone put a file
    under that name after the destination was committed); the daemon picks another
    name.  That name must be recorded before the file moves there, or a crash before
    the final commit leaves recovery believing the file is at the old name (another
    file's), and the database says so even without a crash.
    """
    tree = make_tree(tmp_path)
    tree.write_config(PIPELINES, archive_layout="daily")
    (tree.incoming / "alpha.txt").write_bytes(b"alpha\n")
    # renameat2 number 1 is the claim, number 2 the move into archive/DAY.
    run = run_traced(tree, "-e", "inject=renameat2:error=EEXIST:when=2")
    if run.returncode != 0:
        pytest.fail(f"daemon exited {run.returncode}:\n{run.output[-4000:]}")
    refused = [e for e in run.events if e.kind == "rename" and e.injected]
    if len(refused) != 1 or not refused[0].path.endswith("/working/alpha.txt"):
        pytest.fail(f"the EEXIST was not injected into the move out of working/: {refused}")
    journeys, violations = run.check()
    (moved,) = (p for p in tree.archive.rglob("*") if p.is_file())
    if moved.name == "alpha.txt" or "alpha.txt" not in journeys:
        pytest.fail(f"the daemon did not choose another name: {moved}")
    problems = [str(v) for v in violations]
    rows = tree.query("SELECT final_dir, final_name FROM items")
    if rows != [(moved.parent.name, os.fsencode(moved.name))]:
        problems.append(f"the database records {rows}, the file is at {moved}")
    assert not problems, "\n".join(problems)


@needs_strace
def test_copy_to_another_filesystem_is_durable_before_the_source_goes(
    traced_across: TracedRun,
) -> None:
    """Archive on another filesystem: the copy is durable before the source is unlinked.

    Destination committed, copy written and fsynced, renamed into place, its folder
    fsynced, then the source unlinked from working/, working/ fsynced, end committed.
    """
    journeys, violations = traced_across.check()
    assert set(journeys) == {"alpha.txt", "gamma.txt", "beta.bad"}
    assert journeys["alpha.txt"].copied and journeys["gamma.txt"].copied
    assert not journeys["beta.bad"].copied  # failed/ is still on the data filesystem
    known_gap = {"copy-new-folder"}  # see the next test
    assert not [v for v in violations if v.rule not in known_gap], _report(violations)


@needs_strace
def test_new_date_folder_is_durable_before_the_source_goes(traced_across: TracedRun) -> None:
    """A copy into a new date folder: archive/ is fsynced before the source is unlinked.

    The two filesystems keep no order between them: the unlink in working/ may reach
    the disk first (any fsync or journal commit on that filesystem takes it along),
    and a power loss before archive/ is fsynced then loses the folder's entry with
    the only copy of the file in it.
    """
    _, violations = traced_across.check()
    assert not [v for v in violations if v.rule == "copy-new-folder"], _report(violations)


def _traced_rewrite(tree: Tree, *, again: bool) -> tuple[TracedRun, list[Event]]:
    """slow.txt claimed while its writer still writes it (the window held open by
    DROPLINE_DELAY_AT), and if AGAIN a new slow.txt made meanwhile; under strace.
    Returns the run and the renames of working/slow.txt back to incoming/."""
    tree.write_config(PIPELINES, archive_layout="daily")
    go = tree.root / "go"
    env = {
        "DROPLINE_DELAY_AT": "claim.synced@1:60",
        "DROPLINE_DELAY_UNTIL": str(go),
        # A file its writer holds open is claimed only where leases are refused:
        # the put-back path exists for those filesystems (and for a writer that
        # reopens the file after the probe).
        "DROPLINE_LEASE_REFUSE": "EINVAL",
    }
    writer = (tree.incoming / "slow.txt").open("wb")
    writer.write(b"begun\n")
    writer.flush()
    failures: list[BaseException] = []

    def write_on() -> None:
        try:
            wait_until(lambda: (tree.working / "slow.txt").exists(), 30, what="the claim")
            writer.write(b"ended\n")
            writer.close()
            if again:
                (tree.incoming / "slow.txt").write_bytes(b"second\n")
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            writer.close()
            go.touch()

    thread = threading.Thread(target=write_on, daemon=True)
    thread.start()
    run = run_traced(tree, extra_env=env)
    thread.join(30)
    assert not failures, failures
    assert run.returncode == 0, run.output[-4000:]
    working, incoming = f"{run.data_dir}/working", f"{run.data_dir}/incoming"
    back = [
        e
        for e in run.events
        if e.kind == "rename"
        and e.path == f"{working}/slow.txt"
        and e.target == f"{incoming}/slow.txt"
    ]
    return run, back


def _synced(events: Sequence[Event], folder: str, after: int, before: int) -> bool:
    return any(
        e.kind == "sync" and e.ok and e.path == folder and after < e.start and e.end < before
        for e in events
    )


@needs_strace
def test_put_back_is_synced_before_its_row_is_forgotten(tmp_path: Path) -> None:
    """A file found still being written goes back to incoming/: incoming/ and working/
    are fsynced after that rename and before anything more is written to the state
    database (the next transaction forgets its "claiming" row); until then a crash
    leaves a claim recovery undoes."""
    tree = make_tree(tmp_path)
    run, back = _traced_rewrite(tree, again=False)
    assert [e.ok for e in back] == [True], back
    after = [e for e in run.events if e.kind == "write" and e.ok and e.path == run.wal]
    after = sorted((e for e in after if e.start > back[0].end), key=lambda e: e.start)
    assert after, "nothing written to the state database after the put-back"
    for folder in ("incoming", "working"):
        path = f"{run.data_dir}/{folder}"
        assert _synced(run.events, path, back[0].end, after[0].start), f"{folder}/ not fsynced"
    assert sorted(p.read_bytes() for p in tree.archive.rglob("*") if p.is_file()) == [
        b"begun\nended\n"
    ]


@needs_strace
def test_file_kept_after_a_failed_put_back_moves_only_once_recorded(tmp_path: Path) -> None:
    """The put-back meets a new file of the name (EEXIST): the file stays in working/
    and leaves it only after a commit recorded its destination; both deliveries
    end in archive/, each with its row."""
    tree = make_tree(tmp_path)
    run, back = _traced_rewrite(tree, again=True)
    assert [e.ok for e in back] == [False], back
    working = f"{run.data_dir}/working"
    leaving = [
        e
        for e in run.events
        if e.kind == "rename" and e.ok and e.path.startswith(working) and e.start > back[0].end
    ]
    assert len(leaving) == 2, leaving
    commits = find_commits(run.events, run.wal)
    for move in leaving:
        final_name = os.path.basename(move.target)
        recorded = [
            c
            for c in commits
            if c.end < move.start
            and b"finishing" in c.frames
            and os.fsencode(final_name) in c.frames
        ]
        assert recorded, f"{move.path} moved to {move.target} before its destination was committed"
    contents = sorted(p.read_bytes() for p in tree.archive.rglob("*") if p.is_file())
    assert contents == [b"begun\nended\n", b"second\n"]
    assert sorted(s for (s,) in tree.query("SELECT state FROM items")) == ["archived", "archived"]


# --- the checker itself ----------------------------------------------------------------

# A hand-written trace in the protocol's order: alpha.txt archived into a new date
# folder, beta.bad failed by a stage.  Each line has a label the mutations refer to.
D, WAL = "/d", "/s/state.db-wal"
_W = f"5<{WAL}>"
_INCOMING, _WORKING, _ARCHIVE, _FAILED = (
    f"8<{D}/incoming>",
    f"9<{D}/working>",
    f"11<{D}/archive>",
    f"10<{D}/failed>",
)
_DAY = f"12<{D}/archive/2030-01-02>"
_DOC = f"13<{D}/failed/.tmp-beta.bad.error.json>"
_ARGV = f'["/bin/sh", "-c", "exit 65", "sh", "{D}/working/beta.bad"]'

Trace = list[tuple[str, int, str]]
# What separates two rows in a page (the rest of the first, the header of the next).
_GAP = "\\0" * 80

GOOD: Trace = [
    ("intent.w", 100, f'pwrite64({_W}, "\\0\\rclaimingalpha.txt\\0claimingbeta.bad", 64, 0) = 64'),
    ("intent", 100, f"fdatasync({_W}) = 0"),
    ("claim.a", 100, f'renameat2({_INCOMING}, "alpha.txt", {_WORKING}, "alpha.txt", 1) = 0'),
    ("claim.b", 100, f'renameat2({_INCOMING}, "beta.bad", {_WORKING}, "beta.bad", 1) = 0'),
    ("sync.in", 100, f"fsync({_INCOMING}) = 0"),
    ("sync.work", 100, f"fsync({_WORKING}) = 0"),
    (
        "done.w",
        100,
        f'pwrite64({_W}, "alpha.txtalpha.txtkeepactive{_GAP}beta.badbeta.badrejectactive", 136, 64)'
        " = 136",
    ),
    ("done.call", 100, f"fdatasync({_W} <unfinished ...>"),
    ("worker", 101, f'openat(AT_FDCWD<{D}>, "/tmp", O_TMPFILE, 0600) = 3</tmp/#7>(deleted)'),
    ("done.ret", 100, "<... fdatasync resumed>) = 0"),
    ("start.w", 100, f'pwrite64({_W}, "{STAGE_NAME}", 16, 96) = 16'),
    ("start", 100, f"fdatasync({_W}) = 0"),
    ("exec", 102, f'execve("/bin/sh", {_ARGV}, 0x7f /* 3 vars */) = 0'),
    ("fin.a.w", 100, f'pwrite64({_W}, "finishingalpha.txt2030-01-02", 32, 112) = 32'),
    ("fin.a", 100, f"fdatasync({_W}) = 0"),
    ("mkdir", 100, f'mkdirat({_ARCHIVE}, "2030-01-02", 0750) = 0'),
    ("move.a", 100, f'renameat2({_WORKING}, "alpha.txt", {_DAY}, "alpha.txt", 1) = 0'),
    ("sync.day", 100, f"fsync({_DAY}) = 0"),
    ("sync.arch", 100, f"fsync({_ARCHIVE}) = 0"),
    ("sync.work.a", 100, f"fsync({_WORKING}) = 0"),
    ("end.a.w", 100, f'pwrite64({_W}, "alpha.txtalpha.txtkeeparchived", 30, 144) = 30'),
    ("end.a", 100, f"fdatasync({_W}) = 0"),
    ("result.w", 100, f'pwrite64({_W}, "failed{STAGE_NAME}", 16, 160) = 16'),
    ("result", 100, f"fdatasync({_W}) = 0"),
    ("fin.b.w", 100, f'pwrite64({_W}, "finishingbeta.bad", 16, 176) = 16'),
    ("fin.b", 100, f"fdatasync({_W}) = 0"),
    ("doc.write", 100, f'write({_DOC}, "{{}}\\n", 3) = 3'),
    ("doc.sync", 100, f"fsync({_DOC}) = 0"),
    (
        "doc.place",
        100,
        f'renameat({_FAILED}, ".tmp-beta.bad.error.json", {_FAILED}, "beta.bad.error.json") = 0',
    ),
    ("move.b", 100, f'renameat2({_WORKING}, "beta.bad", {_FAILED}, "beta.bad", 1) = 0'),
    ("sync.failed", 100, f"fsync({_FAILED}) = 0"),
    ("sync.work.b", 100, f"fsync({_WORKING}) = 0"),
    ("end.b.w", 100, f'pwrite64({_W}, "beta.badbeta.badrejectfailed", 28, 192) = 28'),
    ("end.b", 100, f"fdatasync({_W}) = 0"),
    ("checkpoint", 100, f"fdatasync({_W}) = 0"),
]


# delta.txt archived into a new date folder on another filesystem: copied, then unlinked.
_DAY3 = f"12<{D}/archive/2030-01-03>"
_COPY = f"19<{D}/archive/2030-01-03/.dropline-copy.delta.txt.tmp>"
COPIED: Trace = [
    ("intent.w", 100, f'pwrite64({_W}, "claimingdelta.txt", 16, 0) = 16'),
    ("intent", 100, f"fdatasync({_W}) = 0"),
    ("claim", 100, f'renameat2({_INCOMING}, "delta.txt", {_WORKING}, "delta.txt", 1) = 0'),
    ("sync.in", 100, f"fsync({_INCOMING}) = 0"),
    ("sync.work", 100, f"fsync({_WORKING}) = 0"),
    ("done.w", 100, f'pwrite64({_W}, "delta.txtdelta.txtkeepactive", 28, 16) = 28'),
    ("done", 100, f"fdatasync({_W}) = 0"),
    ("fin.w", 100, f'pwrite64({_W}, "finishingdelta.txt", 16, 32) = 16'),
    ("fin", 100, f"fdatasync({_W}) = 0"),
    ("mkdir", 100, f'mkdirat({_ARCHIVE}, "2030-01-03", 0750) = 0'),
    ("copy.open", 100, f'openat({_DAY3}, ".dropline-copy.delta.txt.tmp", O_CREAT, 0640) = {_COPY}'),
    ("copy.send", 100, f"sendfile({_COPY}, 18<{D}/working/delta.txt>, [0] => [2], 2) = 2"),
    ("copy.sync", 100, f"fsync({_COPY}) = 0"),
    (
        "copy.place",
        100,
        f'renameat2({_DAY3}, ".dropline-copy.delta.txt.tmp", {_DAY3}, "delta.txt", 1) = 0',
    ),
    ("sync.day", 100, f"fsync({_DAY3}) = 0"),
    ("sync.arch", 100, f"fsync({_ARCHIVE}) = 0"),
    ("unlink", 100, f'unlinkat({_WORKING}, "delta.txt", 0) = 0'),
    ("sync.work.d", 100, f"fsync({_WORKING}) = 0"),
    ("end.w", 100, f'pwrite64({_W}, "delta.txtdelta.txtkeeparchived", 30, 48) = 30'),
    ("end", 100, f"fdatasync({_W}) = 0"),
]


def render(trace: Trace) -> str:
    """TRACE as ``strace -f -tt -y`` prints it: pid, time, call."""
    return "".join(f"{pid} 12:00:00.{i:06d} {text}\n" for i, (_, pid, text) in enumerate(trace))


def moved(*labels: str, after: str) -> Callable[[Trace], Trace]:
    """A mutation: the lines LABELS moved, in this order, to just after the line AFTER."""

    def apply(trace: Trace) -> Trace:
        lines = [next(t for t in trace if t[0] == label) for label in labels]
        rest = [t for t in trace if t[0] not in labels]
        at = next(i for i, t in enumerate(rest) if t[0] == after)
        return [*rest[: at + 1], *lines, *rest[at + 1 :]]

    return apply


def deleted(label: str) -> Callable[[Trace], Trace]:
    """A mutation: the line LABEL left out."""
    return lambda trace: [t for t in trace if t[0] != label]


def edited(label: str, old: str, new: str) -> Callable[[Trace], Trace]:
    """A mutation: OLD replaced by NEW in the line LABEL."""

    def apply(trace: Trace) -> Trace:
        assert any(t[0] == label and old in t[2] for t in trace), (label, old)
        return [(t[0], t[1], t[2].replace(old, new)) if t[0] == label else t for t in trace]

    return apply


def check_trace(trace: Trace, *, error_document_dir_synced: bool = False) -> list[Violation]:
    """The checker's verdict on a synthetic TRACE."""
    _, violations = check_order(
        parse_strace(render(trace)),
        D,
        WAL,
        stage_name=STAGE_NAME,
        error_document_dir_synced=error_document_dir_synced,
    )
    return violations


def test_parser_joins_unfinished_and_resumed_lines() -> None:
    """Split calls are joined (start and end kept), escapes decoded, injected failures kept."""
    text = (
        "7 12:00:00.000001 fdatasync(5</s/state.db-wal> <unfinished ...>\n"
        '8 12:00:00.000002 execve("/bin/sh", ["/bin/sh", "-c", "a, b"], 0x1 /* 3 vars */) = 0\n'
        "8 12:00:00.000003 +++ exited with 65 +++\n"
        "7 12:00:00.000004 <... fdatasync resumed>) = 0\n"
        '7 12:00:00.000005 pwrite64(5</s/state.db-wal>, "a\\0\\1b\\n\\"\\\\", 7, 0) = 7\n'
        '7 12:00:00.000006 renameat2(9</d/working>, "x, y", 10</d/f a>, "z", 1)'
        " = -1 EEXIST (File exists) (INJECTED)\n"
        '7 renameat(AT_FDCWD</d>, "p", AT_FDCWD</d>, "/q") = 0\n'
        '7 12:00:00.000008 openat(5</d>, "x", O_RDONLY <unfinished ...>\n'
        "7 12:00:00.000009 <... openat resumed> ) = -1 ENOENT (No such file or directory)\n"
    )
    execve, sync, write, refused, rename, opened = parse_strace(text)  # in order of return
    assert (sync.kind, sync.path, sync.start, sync.end, sync.ok) == (
        "sync",
        "/s/state.db-wal",
        0,
        3,
        True,
    )
    assert execve.argv == ("/bin/sh", "-c", "a, b") and execve.start == execve.end == 1
    assert write.data == b'a\x00\x01b\n"\\'
    assert (refused.path, refused.target, refused.ok, refused.injected) == (
        "/d/working/x, y",
        "/d/f a/z",
        False,
        True,
    )
    assert (rename.path, rename.target, rename.ok) == ("/d/p", "/q", True)
    assert (opened.path, opened.ok, opened.start, opened.end) == ("/d/x", False, 7, 8)


def test_checker_accepts_the_protocol_order() -> None:
    """The hand-written traces in the protocol's order pass, so the mutations below are fair."""
    events = parse_strace(render(GOOD))
    journeys, violations = check_order(events, D, WAL, stage_name=STAGE_NAME)
    assert violations == []
    assert set(journeys) == {"alpha.txt", "beta.bad"}
    assert journeys["alpha.txt"].destination == f"{D}/archive/2030-01-02/alpha.txt"
    assert len(journeys["beta.bad"].stages) == 1
    assert len(find_commits(events, WAL)) == 8  # the checkpoint's sync commits nothing
    journeys, violations = check_order(parse_strace(render(COPIED)), D, WAL)
    assert violations == []
    assert journeys["delta.txt"].copied
    assert journeys["delta.txt"].destination == f"{D}/archive/2030-01-03/delta.txt"


# (id, mutation, the rule it breaks, words of the expected message); on GOOD
MUTATIONS: list[tuple[str, Callable[[Trace], Trace], str, str]] = [
    ("claim-before-its-commit", moved("intent", after="claim.b"), "claim-intent", "before a"),
    (
        "claim-row-not-committed",
        edited("intent.w", "claimingalpha", "x"),
        "claim-intent",
        "its claim",
    ),
    ("working-synced-after-record", moved("sync.work", after="done.w"), "claim-synced", "work"),
    ("incoming-never-synced", deleted("sync.in"), "claim-synced", "/d/incoming"),
    (
        "claim-recorded-before-its-rename",
        moved("done.w", after="intent"),
        "claim-synced",
        "recorded before the rename",
    ),
    (
        "claim-never-recorded",
        edited("done.w", "keepactive", "keepclaiming"),
        "claim-synced",
        "recorded the claim",
    ),
    ("stage-before-claim-record", moved("exec", after="sync.work"), "stage-after-commit", "ran"),
    ("stage-start-not-written", deleted("start.w"), "stage-recorded", "its start"),
    ("move-before-destination-commit", moved("move.a", after="start"), "finish-intent", "moved"),
    (
        "move-to-unrecorded-name",
        edited("move.a", '"alpha.txt", 1) = 0', '"alpha.1.txt", 1) = 0'),
        "finish-intent",
        "alpha.1.txt before a commit",
    ),
    ("error-document-not-fsynced", deleted("doc.sync"), "error-document", "before its fsync"),
    ("error-document-after-file", moved("doc.place", after="move.b"), "error-document", "in place"),
    (
        "error-document-written-late",
        moved("doc.write", after="doc.place"),
        "error-document",
        "before it was written",
    ),
    ("new-folder-not-synced", deleted("sync.arch"), "new-folder", "parent was not fsynced"),
    ("day-folder-synced-after-commit", moved("sync.day", after="end.a"), "finish-synced", "02 was"),
    ("working-not-synced-after-move", deleted("sync.work.b"), "finish-synced", "/d/working was"),
    (
        "end-committed-before-failed-synced",
        moved("end.b.w", "end.b", after="move.b"),
        "finish-synced",
        "/d/failed was not",
    ),
]


# ... and on COPIED
COPY_MUTATIONS: list[tuple[str, Callable[[Trace], Trace], str, str]] = [
    ("copy-not-fsynced", deleted("copy.sync"), "copy", "before the copy was fsynced"),
    ("copy-written-late", moved("copy.send", after="copy.place"), "copy", "before it was written"),
    ("copy-placed-early", moved("copy.place", after="done"), "finish-intent", "before a commit"),
    ("source-gone-first", moved("unlink", after="copy.place"), "copy-synced", "2030-01-03 was"),
    ("new-folder-late", moved("sync.arch", after="unlink"), "copy-new-folder", "is new"),
    ("working-not-synced", deleted("sync.work.d"), "finish-synced", "/d/working was not"),
]


@pytest.mark.parametrize(
    ("base", "mutate", "rule", "words"),
    [(GOOD, m, r, w) for _, m, r, w in MUTATIONS]
    + [(COPIED, m, r, w) for _, m, r, w in COPY_MUTATIONS],
    ids=[i for i, _, _, _ in MUTATIONS + COPY_MUTATIONS],
)
def test_checker_catches_a_wrong_order(
    base: Trace, mutate: Callable[[Trace], Trace], rule: str, words: str
) -> None:
    """Each step moved before what it depends on (or left out) is reported under its rule."""
    violations = check_trace(mutate(base))
    caught = [v for v in violations if v.rule == rule and words in v.message]
    assert caught, _report(violations) or "no violation at all"


def test_checker_strict_error_document_rule_needs_a_folder_fsync() -> None:
    """The stricter rule fails the daemon's present order and passes with failed/ fsynced."""
    assert [v.rule for v in check_trace(GOOD, error_document_dir_synced=True)] == [
        "error-document-dir"
    ]
    fixed = [*GOOD, ("sync.failed.early", 100, f"fsync({_FAILED}) = 0")]
    fixed = moved("sync.failed.early", after="doc.place")(fixed)
    assert check_trace(fixed, error_document_dir_synced=True) == []
