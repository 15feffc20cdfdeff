"""The systemd notify protocol, read from a real AF_UNIX datagram socket.

Each test binds a datagram socket in tmp_path and hands it to a real daemon
subprocess as NOTIFY_SOCKET.  A reader thread stamps every datagram with
``time.monotonic()`` on receipt, so the tests can reason about order and
timing: READY within a second of start, STATUS kept current, WATCHDOG paced at
half of WATCHDOG_USEC (also across a wall-clock step), STOPPING on SIGTERM and
RELOADING then READY on SIGHUP.  The socket can also stall (stop reading with its
queue full, as PID 1 does during a daemon-reload): the work goes on, and what
waited arrives in order once it reads again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .harness import (
    FILLER,
    REPO,
    DaemonProcess,
    Tree,
    fill_datagram_queue,
    run_until_idle,
    wait_until,
)

T = TypeVar("T")

ALL = """
- name: all
  match: "*"
"""

HASHED = """
- name: hashed
  match: "*"
  stages:
    - name: checksum
      builtin: sha256
"""

SLOW = """
- name: slow
  match: "*"
  stages:
    - name: pause
      command: ["sleep", "0.3"]
"""

FIRST = """
- name: first
  match: "*"
"""

WITH_CSV = """
- name: csv
  match: "*.csv"
  stages:
    - name: noop
      command: ["true"]
- name: first
  match: "*"
"""

# Loaded into the daemon through PYTHONPATH: SIGUSR1 steps the wall clock
# (time.time) back by an hour, as an NTP step or a manual `date -s` would.  The
# daemon's code runs unchanged; only the clock it reads jumps.
CLOCK_STEP_HOOK = """\
import signal
import time

_real_time = time.time
_offset = [0.0]


def _time():
    return _real_time() - _offset[0]


def _step_back(signum, frame):
    _offset[0] += 3600.0


time.time = _time
signal.signal(signal.SIGUSR1, _step_back)
"""

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last a NUL


@dataclass(frozen=True)
class Notice:
    """One datagram as received: when (monotonic seconds) and its bytes."""

    at: float
    raw: bytes

    @property
    def fields(self) -> dict[str, str]:
        """KEY=VALUE lines of the datagram (latin-1, so any byte decodes)."""
        out: dict[str, str] = {}
        for line in self.raw.decode("latin-1").split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def has(self, key: str, value: str | None = None) -> bool:
        fields = self.fields
        return key in fields and (value is None or fields[key] == value)


class NotifySocket:
    """A bound AF_UNIX datagram socket and a thread collecting what arrives on it."""

    def __init__(self, path: Path) -> None:
        assert len(os.fsencode(path)) <= _SUN_PATH_MAX, f"socket path too long: {path}"
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._notices: list[Notice] = []
        self._closed = threading.Event()
        self._reading = threading.Event()  # cleared while stalled
        self._reading.set()
        self._turn = threading.Lock()  # held by the reader around each read
        self._fillers: list[socket.socket] = []
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            if not self._reading.wait(0.05):
                continue
            with self._turn:
                if not self._reading.is_set():
                    continue
                try:
                    data = self._sock.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
            if data == FILLER:
                continue
            stamped = Notice(time.monotonic(), data)
            with self._lock:
                self._notices.append(stamped)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a daemon at this socket."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def notices(self, key: str | None = None, value: str | None = None) -> list[Notice]:
        """What arrived so far, in order; only those holding KEY (=VALUE) if given."""
        with self._lock:
            got = list(self._notices)
        if key is None:
            return got
        return [n for n in got if n.has(key, value)]

    def wait_for(
        self,
        predicate: Callable[[list[Notice]], T | None],
        timeout: float = 10.0,
        what: str = "",
        daemon: DaemonProcess | None = None,
    ) -> T:
        """Poll PREDICATE on every notice so far until truthy; fail after TIMEOUT.

        With DAEMON, fail at once (with the end of its log) if it exits first.
        """

        def check() -> T | None:
            value = predicate(self.notices())
            if value:
                return value
            if daemon is not None and daemon.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({daemon.proc.returncode}) while waiting for {what}:\n"
                    f"{daemon.text()[-4000:]}"
                )
            return None

        result: T = wait_until(check, timeout, what=what or "a notify message")
        return result

    def wait_notice(
        self,
        key: str,
        value: str | None = None,
        *,
        after: float = 0.0,
        timeout: float = 10.0,
        daemon: DaemonProcess | None = None,
    ) -> Notice:
        """The first notice holding KEY (=VALUE) received after AFTER (monotonic)."""

        def first(notices: list[Notice]) -> Notice | None:
            return next((n for n in notices if n.at >= after and n.has(key, value)), None)

        return self.wait_for(first, timeout, f"{key}={value or '*'}", daemon)

    def stall(self) -> float:
        """Stop reading, and fill the queue as other services fill PID 1's while it is
        busy (a daemon-reload): from now on a send to this socket finds it full.
        When the stall began (monotonic)."""
        self._reading.clear()
        with self._turn:  # the reader is between two reads and waits for resume()
            pass
        for sender in self._fillers:  # the last stall's: the reader has read since
            sender.close()
        self._fillers = fill_datagram_queue(self.path)
        return time.monotonic()

    def resume(self) -> float:
        """Read again (the fillers are dropped); when reading resumed (monotonic)."""
        resumed = time.monotonic()
        self._reading.set()
        return resumed

    def close(self) -> None:
        self._closed.set()
        self._reading.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for sender in self._fillers:
            sender.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket bound at tmp_path/notify.sock, closed at teardown."""
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def let_time_pass(seconds: float) -> None:
    """Let SECONDS of wall time pass (for pacing measurements, not synchronisation)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def archived_count(notice: Notice) -> int | None:
    """The "archived N" figure of a notice's STATUS line, if it has one."""
    match = re.search(r"\barchived (\d+)\b", notice.fields.get("STATUS", ""))
    return int(match.group(1)) if match else None


def status_reaching(count: int, after: float = 0.0) -> Callable[[list[Notice]], Notice | None]:
    """A predicate: the first STATUS at or after AFTER reporting COUNT or more archived."""

    def check(notices: list[Notice]) -> Notice | None:
        for n in notices:
            archived = archived_count(n)
            if n.at >= after and archived is not None and archived >= count:
                return n
        return None

    return check


def create_files(directory: Path, names: list[str]) -> None:
    """Write each NAME in DIRECTORY in place with small content (its own name)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, name.encode())
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def drop_by_rename(directory: Path, names: list[str]) -> None:
    """Write each NAME as a hidden .NAME.tmp, then rename it to NAME (content: NAME)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            temp = f".{name}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, name.encode())
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def process_state(pid: int) -> str:
    """The one-letter state of PID from /proc (R, S, T, ...)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()[0]


def names_in(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir()]


# --- READY -------------------------------------------------------------------


@pytest.mark.slow
def test_ready_before_a_large_backlog_is_archived(
    tree: Tree,
    notify: NotifySocket,
    start_daemon: Any,
    record_property: Callable[[str, object], None],
) -> None:
    """READY=1 comes with 30,000 files waiting, before any of them is archived.

    READY does not wait for the backlog, so its delay does not grow with it
    (the benchmark times it: under a second from process start with a million
    files waiting; a timed assertion here would only measure this machine's
    load). Then the whole backlog is archived, and all the while the busy loop
    keeps pinging the watchdog (WATCHDOG_USEC=2 s: no gap of 2 s between pings).
    """
    total = 30_000
    tree.write_config(ALL, settle_time="0.2s", archive_layout="flat")
    names = [f"f{i:06d}.dat" for i in range(total)]
    create_files(tree.incoming, names)

    started = time.monotonic()
    daemon = start_daemon(env={**notify.env, "WATCHDOG_USEC": "2000000"})
    ready = notify.wait_notice("READY", "1", timeout=10, daemon=daemon)
    with os.scandir(tree.incoming) as it:
        backlog_left = next(it, None) is not None
    elapsed = ready.at - started
    record_property("ready_seconds", round(elapsed, 3))
    print(f"READY {elapsed:.3f} s after Popen with {total} files in incoming/")

    assert backlog_left, "incoming/ was already empty when READY arrived"
    assert archived_count(ready) == 0, f"READY came after files were archived: {ready.raw!r}"

    drained = notify.wait_for(status_reaching(total), 120, f"STATUS archived {total}", daemon)
    pings = [ready.at] + [
        n.at for n in notify.notices("WATCHDOG", "1") if ready.at <= n.at <= drained.at
    ]
    gap = max(b - a for a, b in itertools.pairwise([*pings, drained.at]))
    print(f"drained {drained.at - ready.at:.1f} s after READY; longest watchdog gap {gap:.2f} s")
    assert gap < 2.0, f"no WATCHDOG=1 for {gap:.2f} s while draining"
    wait_until(lambda: len(os.listdir(tree.archive)) == total, 10, what="archive/ complete")
    assert sorted(os.listdir(tree.archive)) == names
    assert not os.listdir(tree.incoming)
    assert not os.listdir(tree.working)
    assert tree.query("SELECT state, count(*) FROM items GROUP BY state") == [("archived", total)]
    assert daemon.stop() == 0


# --- STATUS ------------------------------------------------------------------


def test_status_tracks_a_burst_and_stays_ascii(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """STATUS follows READY, changes while a burst drains, counts archived files, is ASCII.

    The burst goes through a 0.3 s stage on 4 workers, so it takes several
    STATUS periods to drain.  One file has a non-ASCII, non-UTF-8 name; no
    datagram may carry anything but ASCII.
    """
    burst = 16
    tree.write_config(SLOW, workers=4)
    daemon = start_daemon(env=notify.env)
    ready = notify.wait_notice("READY", "1", daemon=daemon)

    def status_after_ready(notices: list[Notice]) -> Notice | None:
        return next(
            (n for n in notices if n.at >= ready.at and n is not ready and n.has("STATUS")), None
        )

    first = notify.wait_for(status_after_ready, 5, "a STATUS after READY", daemon)
    assert archived_count(first) == 0, first.raw

    odd = b"caf\xc3\xa9-\xff.txt"
    dropped = time.monotonic()
    fd = os.open(os.fsencode(tree.incoming) + b"/" + odd, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b"odd name")
    os.close(fd)
    create_files(tree.incoming, [f"b{i:02d}.txt" for i in range(burst - 1)])

    done = notify.wait_for(status_reaching(burst, dropped), 20, f"STATUS archived {burst}", daemon)
    statuses = [n for n in notify.notices("STATUS") if dropped <= n.at <= done.at]
    texts = [n.fields["STATUS"] for n in statuses]
    counts = [archived_count(n) for n in statuses]
    assert len(set(texts)) >= 3, texts
    assert all(c is not None for c in counts), texts
    assert counts == sorted(counts, key=lambda c: c or 0), texts
    assert any(0 < (c or 0) < burst for c in counts), f"no STATUS mid-burst: {texts}"
    assert any("running 4" in t for t in texts), texts

    assert odd in os.listdir(os.fsencode(tree.archive))
    assert (tree.archive / os.fsdecode(odd)).read_bytes() == b"odd name"
    daemon.wait_event("file.archived", file="caf\u00e9-\\xff.txt")
    for notice in notify.notices():
        assert notice.raw.isascii(), notice.raw
    assert daemon.stop() == 0


# --- WATCHDOG ----------------------------------------------------------------


def test_watchdog_pings_every_half_interval_while_idle(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """With WATCHDOG_USEC=400000, an idle daemon sends WATCHDOG=1 about every 0.2 s."""
    tree.write_config(ALL)
    daemon = start_daemon(env={**notify.env, "WATCHDOG_USEC": "400000"})
    ready = notify.wait_notice("READY", "1", daemon=daemon)
    start = notify.wait_notice("WATCHDOG", "1", after=ready.at, timeout=2, daemon=daemon).at
    let_time_pass(2.0)
    pings = [n.at for n in notify.notices("WATCHDOG", "1") if start <= n.at <= start + 2.0]
    intervals = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 6, f"{len(pings)} pings in 2 s: {intervals}"
    median = statistics.median(intervals)
    assert 0.1 <= median <= 0.3, f"median interval {median:.3f} s: {intervals}"
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "watchdog_env",
    [{}, {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}],
    ids=["no-watchdog-usec", "watchdog-for-another-pid"],
)
def test_no_watchdog_unless_meant_for_us(
    tree: Tree, notify: NotifySocket, start_daemon: Any, watchdog_env: dict[str, str]
) -> None:
    """Without WATCHDOG_USEC (or with WATCHDOG_PID naming another process) no WATCHDOG=1."""
    tree.write_config(ALL)
    daemon = start_daemon(env={**notify.env, **watchdog_env})
    notify.wait_notice("READY", "1", daemon=daemon)
    notify.wait_notice("STATUS", daemon=daemon)
    let_time_pass(0.8)
    assert daemon.proc.poll() is None
    assert not notify.notices("WATCHDOG"), notify.notices()
    assert daemon.stop() == 0


def test_frozen_daemon_stops_pinging(tree: Tree, notify: NotifySocket, start_daemon: Any) -> None:
    """SIGSTOP silences WATCHDOG=1 (no ping for 1 s); after SIGCONT the pings resume."""
    tree.write_config(ALL)
    daemon = start_daemon(env={**notify.env, "WATCHDOG_USEC": "400000"})
    ready = notify.wait_notice("READY", "1", daemon=daemon)
    notify.wait_notice("WATCHDOG", "1", after=ready.at, timeout=2, daemon=daemon)

    daemon.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(daemon.proc.pid) == "T", 5, what="daemon stopped")
        # A datagram sent just before the stop may still be in flight for a moment.
        frozen = time.monotonic() + 0.05
        let_time_pass(1.05)
        during = [n for n in notify.notices("WATCHDOG") if n.at >= frozen]
        assert not during, f"{len(during)} WATCHDOG while stopped"
    finally:
        resumed = time.monotonic()
        daemon.signal(signal.SIGCONT)
    notify.wait_notice("WATCHDOG", "1", after=resumed, timeout=1.0, daemon=daemon)
    notify.wait_for(
        lambda ns: len([n for n in ns if n.at >= resumed and n.has("WATCHDOG", "1")]) >= 3,
        2.0,
        "three WATCHDOG after SIGCONT",
        daemon,
    )
    assert daemon.stop() == 0


def test_watchdog_survives_a_wall_clock_step_back(
    tree: Tree, notify: NotifySocket, start_daemon: Any, tmp_path: Path
) -> None:
    """The wall clock stepping back an hour does not stop the WATCHDOG=1 pings.

    systemd's watchdog runs on CLOCK_MONOTONIC; pings paced by the wall clock
    stop after a step back and systemd kills a healthy daemon.
    """
    hook = tmp_path / "clockhook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CLOCK_STEP_HOOK)
    tree.write_config(ALL)
    env = {
        **notify.env,
        "WATCHDOG_USEC": "400000",
        "PYTHONPATH": f"{hook}{os.pathsep}{REPO / 'daemon'}",
    }
    daemon = start_daemon(env=env)
    ready = notify.wait_notice("READY", "1", daemon=daemon)
    notify.wait_notice("WATCHDOG", "1", after=ready.at, timeout=2, daemon=daemon)
    stepped = time.monotonic()
    daemon.signal(signal.SIGUSR1)
    # systemd would act after 0.4 s without a ping; allow a little more.
    notify.wait_notice("WATCHDOG", "1", after=stepped + 0.05, timeout=0.6, daemon=daemon)
    assert daemon.stop() == 0


# --- STOPPING ----------------------------------------------------------------


def test_sigterm_mid_burst_stops_promptly_and_loses_nothing(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """SIGTERM while a burst drains: STOPPING=1, exit 0 within 2 s, every file accounted for.

    Half of the 3000 files are dropped (write, then rename) before the signal
    and half after it.  Each file ends in exactly one of incoming/, working/,
    archive/; a second run then archives all of them byte-identical.
    """
    total = 3000
    tree.write_config(HASHED)
    daemon = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    names = [f"s{i:05d}.txt" for i in range(total)]

    drop_by_rename(tree.incoming, names[: total // 2])
    wait_until(lambda: len(os.listdir(tree.archive)) >= 50, 10, what="the burst draining")
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    drop_by_rename(tree.incoming, names[total // 2 :])

    stopping = notify.wait_notice("STOPPING", "1", after=signalled, timeout=2)
    assert daemon.wait(timeout=5) == 0, daemon.text()[-4000:]
    exited = time.monotonic()
    assert exited - signalled < 2.0, f"exit took {exited - signalled:.2f} s after SIGTERM"
    assert stopping.at - signalled < 1.0
    daemon.wait_event("daemon.stopped")

    places = {
        "incoming": names_in(tree.incoming),
        "working": names_in(tree.working),
        "archive": names_in(tree.archive),
    }
    every = [name for found in places.values() for name in found]
    sizes = {k: len(v) for k, v in places.items()}
    print(f"after SIGTERM: {sizes}")
    assert len(every) == total, sizes
    assert sorted(every) == names, sizes
    assert 0 < sizes["archive"] < total, sizes
    for where in ("incoming", "archive", "working"):
        for name in places[where]:
            assert (tree.data / where / name).read_bytes() == name.encode(), (where, name)

    assert run_until_idle(tree) == 0
    assert sorted(names_in(tree.archive)) == names
    for name in names:
        assert (tree.archive / name).read_bytes() == name.encode()
    assert not names_in(tree.incoming)
    assert not names_in(tree.working)
    assert tree.query("SELECT state, count(*) FROM items GROUP BY state") == [("archived", total)]


# --- RELOADING ---------------------------------------------------------------


def _reload(daemon: DaemonProcess, notify: NotifySocket) -> tuple[Notice, Notice, float]:
    """SIGHUP; the RELOADING=1 and the READY=1 after it, and when the signal went."""
    sent = time.monotonic()
    daemon.signal(signal.SIGHUP)
    reloading = notify.wait_notice("RELOADING", "1", after=sent, timeout=5, daemon=daemon)
    ready = notify.wait_notice("READY", "1", after=reloading.at, timeout=5, daemon=daemon)
    order = notify.notices()
    assert order.index(reloading) < order.index(ready)
    return reloading, ready, sent


def _claimed_pipeline(daemon: DaemonProcess, tree: Tree, name: str) -> str:
    (tree.incoming / name).write_bytes(name.encode())
    claimed = daemon.wait_event("file.claimed", file=name)
    daemon.wait_event("file.archived", file=name)
    return str(claimed["pipeline"])


def test_sighup_reloads_a_good_configuration(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; the new routes apply."""
    tree.write_config(FIRST)
    daemon = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    assert _claimed_pipeline(daemon, tree, "before.csv") == "first"

    tree.write_config(WITH_CSV)
    reloading, _, sent = _reload(daemon, notify)
    usec = reloading.fields.get("MONOTONIC_USEC", "")
    assert usec.isdigit(), reloading.raw
    # CLOCK_MONOTONIC is system-wide: the stamp falls between our SIGHUP and receipt.
    assert sent - 0.01 <= int(usec) / 1e6 <= reloading.at + 0.01, (usec, sent, reloading.at)
    daemon.wait_event("daemon.reloaded")
    assert _claimed_pipeline(daemon, tree, "after.csv") == "csv"
    assert _claimed_pipeline(daemon, tree, "after.txt") == "first"
    assert not daemon.find("config.rejected")
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "broken",
    ["invalid-yaml", "unknown-key"],
)
def test_sighup_keeps_the_old_configuration_when_the_new_is_bad(
    tree: Tree, notify: NotifySocket, start_daemon: Any, broken: str
) -> None:
    """SIGHUP with a broken file: RELOADING=1, READY=1, config.rejected, old routes kept."""
    tree.write_config(WITH_CSV)
    daemon = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    assert _claimed_pipeline(daemon, tree, "before.csv") == "csv"

    if broken == "invalid-yaml":
        tree.config.write_text("pipelines: [\n  - name: {broken\n")
    else:
        tree.write_config(FIRST, frobnicate=1)
    _reload(daemon, notify)
    rejected = daemon.wait_event("config.rejected")
    assert "previous" in str(rejected.get("kept", "")), rejected
    assert not daemon.find("daemon.reloaded")
    assert daemon.proc.poll() is None
    assert _claimed_pipeline(daemon, tree, "after.csv") == "csv"
    assert daemon.stop() == 0


def test_watchdog_stays_fed_while_a_big_file_is_hashed(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """The loop reads and hashes each claimed file itself: one of 2 GiB (sparse, so
    no disk is used; 1 to 5 s here) must not silence WATCHDOG=1 (WATCHDOG_USEC
    0.5 s: no gap of 0.5 s between pings from the drop to the archive)."""
    tree.write_config(ALL, archive_layout="flat")
    daemon = start_daemon(env={**notify.env, "WATCHDOG_USEC": "500000"})
    ready = notify.wait_notice("READY", "1", timeout=10, daemon=daemon)
    notify.wait_notice("WATCHDOG", "1", after=ready.at, timeout=2, daemon=daemon)
    hidden = tree.incoming / ".big.dat"  # hidden names are not claimed
    with open(hidden, "wb") as f:
        f.truncate(2 << 30)
    dropped = time.monotonic()
    os.rename(hidden, tree.incoming / "big.dat")
    wait_until(lambda: names_in(tree.archive) == ["big.dat"], 60, what="big.dat archived")
    archived = time.monotonic()
    pings = [n.at for n in notify.notices("WATCHDOG", "1") if dropped <= n.at <= archived]
    gap = max(b - a for a, b in itertools.pairwise([dropped, *pings, archived]))
    print(f"2 GiB archived {archived - dropped:.2f} s after the drop; longest gap {gap:.2f} s")
    assert archived - dropped > 0.5, "hashed too fast to show anything: use a bigger file"
    assert gap < 0.5, f"no WATCHDOG=1 for {gap:.2f} s while a big file was hashed"
    assert daemon.stop() == 0


# --- a reader that stops reading -------------------------------------------------
#
# PID 1 stops reading its notify socket for seconds during a daemon-reload on a
# busy host, and the datagrams of every service fill its queue meanwhile.
# NotifySocket.stall() does the same: it stops reading and fills the queue, so
# that any send finds it full (a blocking send would wait for resume()).

SLOW_STOP = """
- name: slow
  match: "*"
  stages:
    - name: pause
      command: ["sleep", "3"]
"""


class Dropper:
    """Writes small files in place into a folder at a steady pace, in a thread."""

    def __init__(self, directory: Path, rate: float) -> None:
        self.directory = directory
        self.rate = rate
        self.names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        for i in itertools.count():
            if self._stop.wait(max(0.0, start + i / self.rate - time.monotonic())):
                return
            name = f"live{i:06d}.dat"
            create_files(self.directory, [name])
            self.names.append(name)

    def stop(self) -> list[str]:
        """Stop writing; every name written."""
        self._stop.set()
        self._thread.join(timeout=5)
        return list(self.names)


def test_a_stalled_reader_does_not_stall_the_work(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """The notify reader stops reading for 3 s or more during a live run (100 files/s):
    files keep reaching archive/ while it is stalled, a reload is done meanwhile, and
    once it reads again the RELOADING=1 stamped during the stall arrives, then READY=1,
    WATCHDOG=1 and a current STATUS=; nothing is lost."""
    tree.write_config(ALL)
    daemon = start_daemon(env={**notify.env, "WATCHDOG_USEC": "2000000"})
    notify.wait_notice("READY", "1", daemon=daemon)

    def archived() -> int:
        return len(os.listdir(tree.archive))

    dropper = Dropper(tree.incoming, rate=100.0)
    try:
        wait_until(lambda: archived() >= 50, 10, what="the live run under way")
        stalled = notify.stall()
        try:
            # Busy, the loop updates STATUS= every 0.25 s: a blocking send stops it here.
            at_stall = archived()
            wait_until(lambda: archived() >= at_stall + 100, 5, what="files archived while stalled")
            hup = time.monotonic()
            daemon.signal(signal.SIGHUP)
            daemon.wait_event("daemon.reloaded", timeout=5)
            at_reload = archived()
            wait_until(
                lambda: archived() >= at_reload + 100,
                5,
                what="files archived while stalled, after the reload",
            )
            let_time_pass(stalled + 3.0 - time.monotonic())  # hold the stall for 3 s at least
            during = archived() - at_stall
            assert daemon.proc.poll() is None, daemon.text()[-4000:]
        finally:
            resumed = notify.resume()
        print(f"{during} files archived in a stall of {resumed - stalled:.1f} s")

        reloading = notify.wait_notice("RELOADING", "1", after=resumed, timeout=5, daemon=daemon)
        ready = notify.wait_notice("READY", "1", after=reloading.at, timeout=5, daemon=daemon)
        order = notify.notices()
        assert order.index(reloading) < order.index(ready)
        # Stamped when the SIGHUP was handled, during the stall: it waited for room.
        usec = int(reloading.fields["MONOTONIC_USEC"])
        assert hup - 0.01 <= usec / 1e6 <= resumed, (hup, usec, resumed)
        notify.wait_notice("WATCHDOG", "1", after=resumed, timeout=5, daemon=daemon)
        notify.wait_for(
            status_reaching(at_stall + during, after=resumed), 5, "a current STATUS", daemon
        )
    finally:
        names = dropper.stop()
    wait_until(lambda: archived() >= len(names), 30, what="every file archived")
    assert sorted(names_in(tree.archive)) == sorted(names)
    assert not daemon.find("notify.failed")
    signalled = time.monotonic()
    assert daemon.stop() == 0
    notify.wait_notice("STOPPING", "1", after=signalled, timeout=5)


def test_stopping_waits_for_room_while_the_stop_goes_on(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """SIGTERM while the reader is stalled and a stage runs: the daemon goes on
    stopping (daemon.stopping is logged at once), STOPPING=1 arrives once the
    reader reads again, and the daemon exits 0 when the stage has finished."""
    tree.write_config(SLOW_STOP, stop_timeout="10s")  # the stage may end
    daemon = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    (tree.incoming / "slow.txt").write_bytes(b"slow")
    daemon.wait_event("stage.started", file="slow.txt")
    notify.stall()
    try:
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("daemon.stopping", timeout=2)
    finally:
        resumed = notify.resume()
    notify.wait_notice("STOPPING", "1", after=resumed, timeout=2, daemon=daemon)
    assert daemon.proc.poll() is None, "the stage still runs"
    assert daemon.wait(timeout=10) == 0, daemon.text()[-4000:]
    assert names_in(tree.archive) == ["slow.txt"]


def test_a_reader_that_never_reads_again_does_not_hold_the_exit(
    tree: Tree, notify: NotifySocket, start_daemon: Any
) -> None:
    """SIGTERM while the reader is stalled for good: STOPPING=1 gets a short last
    try, then the daemon exits 0 all the same and says what it could not send."""
    tree.write_config(ALL)
    daemon = start_daemon(env=notify.env)
    notify.wait_notice("READY", "1", daemon=daemon)
    notify.stall()
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0, daemon.text()[-4000:]
    took = time.monotonic() - signalled
    unsent = daemon.find("notify.unsent")
    assert unsent and unsent[0]["messages"] == ["STOPPING=1"], daemon.text()[-4000:]
    daemon.wait_event("daemon.stopped")
    print(f"exit {took:.2f} s after SIGTERM")


@contextlib.contextmanager
def must_not_block(seconds: float) -> Iterator[None]:
    """Fail (rather than hang) if the block takes longer than SECONDS: SIGALRM's handler
    raises in the main thread, interrupting a blocked send."""

    def blocked(signum: int, frame: Any) -> None:
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_notifier_keeps_the_order_and_only_the_newest_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, against a real socket whose queue is full: no call blocks;
    READY=1, RELOADING=1, WATCHDOG=1 and STOPPING=1 wait in order (one WATCHDOG=1
    for several), STATUS= lines that found the queue full are dropped, and once
    the reader reads again everything waiting goes, in order, then a new STATUS=."""
    from dropline.notify import Notifier

    listener = NotifySocket(tmp_path / "n.sock")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
        notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
        notifier.ready("one")
        listener.wait_notice("READY", "1", timeout=5)

        listener.stall()
        with must_not_block(5.0):
            notifier.status("two")  # full: dropped
            notifier.reloading()
            notifier.status("three")  # behind RELOADING=1, then replaced by READY's line
            notifier.ready("four")
            notifier.watchdog()
            notifier.watchdog()
            notifier.stopping()
        waiting = notifier.pending
        assert [m.split("\n")[0] for m in waiting] == [
            "RELOADING=1",
            "READY=1",
            "WATCHDOG=1",
            "STOPPING=1",
        ], waiting
        assert waiting[1] == "READY=1\nSTATUS=four"
        notifier.retry(time.monotonic() + 1)  # still full: nothing changes, nothing blocks
        assert notifier.pending == waiting
        assert notifier.due() is not None

        resumed = listener.resume()

        def sent_all() -> bool:
            notifier.retry(time.monotonic() + 1)
            return not notifier.pending

        wait_until(sent_all, 5, what="every waiting message sent")
        assert notifier.due() is None
        notifier.status("four")  # what systemd shows already: not sent again
        notifier.status("five")
        listener.wait_notice("STATUS", "five", after=resumed, timeout=5)
        got = [n.raw.decode() for n in listener.notices() if n.at >= resumed]
        assert [g.split("\n")[0] for g in got] == [
            "RELOADING=1",
            "READY=1",
            "WATCHDOG=1",
            "STOPPING=1",
            "STATUS=five",
        ], got

        # At exit: a short last try delivers what waits once the reader reads again.
        listener.stall()
        notifier.stopping()
        assert notifier.pending == ["STOPPING=1"]
        resumer = threading.Timer(0.1, listener.resume)
        resumer.start()
        closing = time.monotonic()
        notifier.close(timeout=5.0)
        resumer.join()
        listener.wait_notice("STOPPING", "1", after=closing, timeout=5)
        assert not notifier.enabled
    finally:
        listener.close()


def test_notifier_gives_up_on_a_socket_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader gone (ECONNREFUSED) is no reason to keep or retry anything: the
    message is given up, and nothing waits."""
    from dropline.notify import Notifier

    listener = NotifySocket(tmp_path / "n.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
    listener.close()
    notifier.ready("x")
    notifier.stopping()
    assert notifier.pending == []
    assert notifier.due() is None
    notifier.close()
