"""Crash soak: SIGKILL at random moments while thousands of files arrive, then a clean finish.

A writer thread drops files into incoming/ at a steady pace broken by a few
bursts of 50 to 200 files at once: some written in place (sometimes in two
writes with a pause between), some written under a temporary name
(``.NAME.tmp`` or ``NAME.part``) and renamed in, a few of those left under
their temporary name for a while, and some rewritten in place three to 30
times in a row, as ``for i in ...; do ... > NAME; done`` does (each version
the daemon takes must end once, complete; the last one always does).
Their names route them to pipelines whose stages take some time (the sha256
builtin then a command; a Python stage in a worker process), fail once then
succeed after a backoff, or fail for good (exit 65); some match no pipeline.

Meanwhile a killer loop starts the real daemon and SIGKILLs it, dozens of
times, each kill aimed somewhere: at a random moment, during start-up
recovery, while a stage runs, during a retry's backoff, during a SIGHUP
reload (of a changed but equivalent configuration), at one of the
protocol's crash points, or while ``dropline retry --all-failed`` sends the
failed files through again (half of those runs armed with a crash point of
the retry).  Then one clean run drains everything, and the
checks of RELIABILITY.md apply: every file exactly once in archive/ or
failed/, byte-identical, the failures exactly the expected ones (with their
reasons), nothing left in incoming/ or working/, ``PRAGMA integrity_check``
ok, no temporary name ever claimed, nothing vanished.

``make test`` runs a short soak (1,500 files, at least 15 kills); ``make soak``
(``DROPLINE_SOAK=long``) a long one (10,000 files, at least 60 kills).  The
seed of the random schedule is printed; ``DROPLINE_SOAK_SEED=N`` replays that
schedule (files, kinds of kill, delays), though a real machine's timing varies.
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropline.crashpoints import POINTS

from .harness import DaemonProcess, Tree, run_cli, run_until_idle


@dataclass(frozen=True)
class Tier:
    """How big a soak is."""

    name: str
    files: int
    min_kills: int  # the killer goes on at least this long, and while the writer writes
    rate: float  # files dropped per second
    drain_timeout: float  # seconds the clean finish may take


SHORT = Tier("short", 1_500, 15, 150.0, 120.0)
LONG = Tier("long", 10_000, 60, 150.0, 900.0)

# Share of each kind of file, by what should become of it.
CATEGORIES: tuple[tuple[str, int], ...] = (
    ("hashed", 30),  # sha256 builtin, then a command taking some ms: archived
    ("flaky", 20),  # a command failing once, then succeeding after a backoff: archived
    ("bad", 10),  # a command exiting 65 (permanent): failed
    ("python", 10),  # a Python stage in a worker process: archived
    ("plain", 20),  # a pipeline without stages: archived
    ("unmatched", 10),  # no pipeline matches: failed
)
EXPECT_FAILED = {"bad", "unmatched"}
METHODS = ("inplace", "inplace2", "tmp", "part")
REWRITE_SHARE = 0.25  # of the "plain" files: rewritten in place several times in a row
# A rewritten name's versions after the first archived: NAME's stem, .ITEMID, its extension.
SUFFIXED = re.compile(r"(?P<stem>.+)\.[0-9A-Z]{26}(?:-\d+)?(?P<ext>\.txt)")

# Where the kills are aimed, and how often each is picked once all had a turn.
KINDS: tuple[tuple[str, int], ...] = (
    ("random", 30),
    ("recovery", 15),
    ("stage", 20),
    ("backoff", 15),
    ("reload", 12),
    ("crashpoint", 8),
    ("retry", 10),
)
# The crash points one filesystem can reach (not those of a copy across filesystems);
# those of `dropline retry` are armed by the "retry" kills.
CRASH_POINTS = tuple(p for p in POINTS if ".cop" not in p and not p.startswith("retry."))
RETRY_POINTS = tuple(p for p in POINTS if p.startswith("retry."))
AIM_TIMEOUT = 5.0  # seconds to wait for the moment a kill is aimed at
POLL = 0.002

# What the daemon skips in incoming/ (config.DEFAULT_IGNORE): it must never claim these.
TEMPORARY = (".*", "*.tmp", "*.part", "*.partial", "*~")
# Events that must never appear in any run's log.
ANOMALIES = ("file.vanished", "daemon.failed", "config.rejected", "recovery.skipped")

FLAKY_SCRIPT = 'test -e "$0.seen" || { touch "$0.seen"; exit 1; }'
SOAKSTAGES = """\
import time


def pause(ctx):
    time.sleep(0.005)
    return {"paused": True}
"""


def _pipelines(seen_dir: Path, variant: int) -> str:
    """The pipelines; VARIANT only changes a comment (an equivalent configuration)."""
    flaky = json.dumps(["sh", "-c", FLAKY_SCRIPT, f"{seen_dir}/{{item_id}}"])
    pause = json.dumps(["sh", "-c", "sleep 0.0$(($$ % 5))"])
    return f"""
# configuration variant {variant}
- name: reject
  match: "*bad*"
  stages:
    - name: refuse
      command: ["sh", "-c", "exit 65"]
- name: hashed
  match: "*.sum"
  stages:
    - name: checksum
      builtin: sha256
    - name: pause
      command: {pause}
- name: flaky
  match: "*.retry"
  stages:
    - name: fails-once
      command: {flaky}
      retries: 3
      backoff: {{initial: 0.2s, max: 0.5s}}
      # Every file fails here once: five in a row hold the pipeline (gates.py), and
      # the probes (a file that failed once: it succeeds) release it; short here.
      hold_probe: {{initial: 0.2s, max: 0.5s}}
- name: python
  match: "*.pyst"
  stages:
    - name: pause
      python: "soakstages:pause"
- name: plain
  match: "*.txt"
"""


def _write_config(tree: Tree, seen_dir: Path, variant: int) -> None:
    # Both spellings of the rescan interval mean one second.
    rescan = "1s" if variant % 2 == 0 else "1000ms"
    stages_dir = tree.root / "pipelines"
    if not stages_dir.exists():
        stages_dir.mkdir()
        (stages_dir / "soakstages.py").write_text(SOAKSTAGES)
    tree.write_config(
        _pipelines(seen_dir, variant),
        rescan_interval=rescan,
        workers=6,
        pipelines_dir=str(stages_dir),
    )


# --- the files ----------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """One file the writer drops, and how."""

    name: str
    data: bytes
    category: str
    method: str
    hold: int = 0  # a temporary name stays this many files before it is renamed in
    at: float = 0.0  # when the writer drops it, in seconds after it starts
    # method "rewrite": every version written over NAME in turn; data is the last.
    versions: tuple[bytes, ...] = ()


def _name(i: int, category: str) -> str:
    return {
        "hashed": f"h{i:05d}.sum",
        "flaky": f"r{i:05d}.retry",
        "bad": f"x{i:05d}-bad.sum",  # also matches *.sum: the first pipeline matching wins
        "python": f"y{i:05d}.pyst",
        "plain": f"p{i:05d}.txt",
        "unmatched": f"u{i:05d}.zzz",
    }[category]


def _schedule(rng: random.Random, count: int, rate: float) -> list[float]:
    """When each file is dropped: RATE a second on average, with bursts of 50 to 200."""
    times: list[float] = []
    t = 0.0
    burst = 0
    for _ in range(count):
        if burst:
            burst -= 1
        elif rng.random() < 0.002:
            burst = rng.randint(50, 200)
        else:
            t += rng.expovariate(rate)
        times.append(t)
    scale = count / rate / max(t, 1e-9)
    return [x * scale for x in times]


def _plan(rng: random.Random, count: int, rate: float) -> list[Drop]:
    """COUNT files with unique content (their name, then random bytes), and when to drop them."""
    names = [c for c, _ in CATEGORIES]
    weights = [w for _, w in CATEGORIES]
    times = _schedule(rng, count, rate)
    drops = []
    for i in range(count):
        category = rng.choices(names, weights)[0]
        method = rng.choice(METHODS)
        size = rng.randint(100_000, 300_000) if rng.random() < 0.02 else rng.randint(0, 4_000)
        name = _name(i, category)
        hold = rng.randint(20, 120) if method in ("tmp", "part") and rng.random() < 0.1 else 0
        data = name.encode() + b"\n" + rng.randbytes(size)
        versions: tuple[bytes, ...] = ()
        if category == "plain" and rng.random() < REWRITE_SHARE:
            method = "rewrite"
            count = rng.randint(3, 30)
            versions = tuple(b"%s\nversion %d\n" % (name.encode(), v) for v in range(count))
            versions = tuple(v + rng.randbytes(rng.randint(0, 4_000)) for v in versions)
            data = versions[-1]
        drops.append(Drop(name, data, category, method, hold, times[i], versions))
    return drops


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Writer(threading.Thread):
    """Drops the planned files at their planned times, independently of the killer."""

    def __init__(self, incoming: Path, drops: list[Drop]) -> None:
        super().__init__(name="soak-writer", daemon=True)
        self.incoming = incoming
        self.drops = drops
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        try:
            self._write_all()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _write_all(self) -> None:
        start = time.monotonic()
        held: list[tuple[int, str, str]] = []  # (renamed after file N, temporary, final)
        for i, drop in enumerate(self.drops):
            if self.stop.is_set():
                return
            delay = start + drop.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the writer's pace, not a synchronisation
            self._drop(i, drop, held)
            due = [h for h in held if h[0] <= i]
            held = [h for h in held if h[0] > i]
            for _, tmp, final in due:
                os.rename(self.incoming / tmp, self.incoming / final)
            self.written = i + 1
        for _, tmp, final in held:
            os.rename(self.incoming / tmp, self.incoming / final)

    def _drop(self, i: int, drop: Drop, held: list[tuple[int, str, str]]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if drop.method == "rewrite":
            # Truncated and written again while the daemon may be claiming it; the
            # pauses are a shell's, which opens the file before the program writing
            # into it has started, and that program's, writing in two goes.
            for version in drop.versions:
                fd = os.open(self.incoming / drop.name, flags & ~os.O_EXCL | os.O_TRUNC, 0o644)
                try:
                    time.sleep(0.001)
                    _write_fully(fd, version[: len(version) // 2])
                    time.sleep(0.001)
                    _write_fully(fd, version[len(version) // 2 :])
                finally:
                    os.close(fd)
            return
        if drop.method in ("inplace", "inplace2"):
            fd = os.open(self.incoming / drop.name, flags, 0o644)
            try:
                if drop.method == "inplace2":
                    half = len(drop.data) // 2
                    _write_fully(fd, drop.data[:half])
                    time.sleep(0.002)  # a writer pausing mid-file (well under settle_time)
                    _write_fully(fd, drop.data[half:])
                else:
                    _write_fully(fd, drop.data)
            finally:
                os.close(fd)
            return
        tmp = f".{drop.name}.tmp" if drop.method == "tmp" else f"{drop.name}.part"
        fd = os.open(self.incoming / tmp, flags, 0o644)
        try:
            _write_fully(fd, drop.data)
        finally:
            os.close(fd)
        if drop.hold:
            held.append((i + drop.hold, tmp, drop.name))
        else:
            os.rename(self.incoming / tmp, self.incoming / drop.name)


# --- watching a daemon --------------------------------------------------------


class LogTail:
    """The JSON events of one run's log, read incrementally (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""
        self.events: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.pos += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "<raw>", "text": line.decode("utf-8", "replace")})

    def seen(self, event: str) -> bool:
        self.poll()
        return any(e.get("event") == event for e in self.events)


def _poll(
    predicate: Callable[[], bool], timeout: float, proc: DaemonProcess, interval: float = POLL
) -> bool:
    """True once PREDICATE holds; False after TIMEOUT or if the daemon exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.proc.poll() is not None:
            return False
        time.sleep(interval)
    return False


def _holds_open(pid: int, target: str) -> bool:
    """Whether process PID has TARGET open (the state database: recovery is next)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _is_temporary(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMPORARY)


# --- the soak -----------------------------------------------------------------


@dataclass
class Figures:
    """What the soak did, printed at the end and quoted in every assertion."""

    seed: int
    tier: str
    files: int = 0
    categories: collections.Counter[str] = field(default_factory=collections.Counter)
    methods: collections.Counter[str] = field(default_factory=collections.Counter)
    held: int = 0
    in_bursts: int = 0
    starts: int = 0  # daemons started, the clean finish included
    kills: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    missed: collections.Counter[str] = field(default_factory=collections.Counter)
    self_kills: int = 0  # crash points reached (the daemon SIGKILLed itself)
    points: list[str] = field(default_factory=list)
    before_ready: int = 0  # kills before daemon.ready: during start-up or recovery
    in_recovery: int = 0  # kills after the state database was opened, before daemon.ready
    during_stage: int = 0  # kills with a stage started and its result not logged
    during_backoff: int = 0  # kills with an item waiting out a retry's backoff
    hups: int = 0
    during_reload: int = 0  # kills after daemon.reloading, before daemon.reloaded
    reloaded: int = 0  # daemon.reloaded seen before the kill
    recovery: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0
    retry_commands: int = 0  # `dropline retry --all-failed` run beside a daemon
    requeued: int = 0  # file.requeued logged: failed files sent through again
    put_back: int = 0  # file.busy: claimed while still written, back to incoming/
    kept: int = 0  # file.busy: could not go back (its name taken again), kept in working/
    soak_seconds: float = 0.0
    drain_seconds: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        missed = ", ".join(f"{k} {n}" for k, n in sorted(self.missed.items())) or "none"
        recovery = ", ".join(f"{k} {n}" for k, n in sorted(self.recovery.items()) if n)
        categories = ", ".join(f"{k} {n}" for k, n in sorted(self.categories.items()))
        methods = ", ".join(f"{k} {n}" for k, n in sorted(self.methods.items()))
        return (
            f"soak tier={self.tier} seed={self.seed} (DROPLINE_SOAK_SEED={self.seed} replays)\n"
            f"  files {self.files} ({categories}); written {methods}; "
            f"{self.held} held under a temporary name; {self.in_bursts} in bursts\n"
            f"  kills {self.kills} ({kinds}); aim missed: {missed}; "
            f"SIGKILLs sent {self.kills - self.self_kills}, "
            f"crash points reached {self.self_kills} of {len(self.points)} armed "
            f"({' '.join(self.points)})\n"
            f"  kills before ready {self.before_ready} (of them after the database was opened, "
            f"in recovery: {self.in_recovery}), during a stage {self.during_stage}, "
            f"during a backoff {self.during_backoff}; SIGHUPs {self.hups} "
            f"(daemon.reloaded before the kill {self.reloaded}, "
            f"killed between reloading and reloaded {self.during_reload})\n"
            f"  daemons started {self.starts} (restarts {max(self.starts - 1, 0)}); "
            f"recovery did: {recovery or 'nothing'}; retries logged {self.retries}; "
            f"dropline retry run {self.retry_commands} times, files requeued {self.requeued}\n"
            f"  claimed while still written: put back {self.put_back}, kept {self.kept}\n"
            f"  soak {self.soak_seconds:.1f} s, clean finish {self.drain_seconds:.1f} s"
        )


class Soak:
    """The killer loop and what it learns from each run's log."""

    def __init__(self, tree: Tree, rng: random.Random, figures: Figures, seen_dir: Path) -> None:
        self.tree = tree
        self.rng = rng
        self.figures = figures
        self.seen_dir = seen_dir
        self.variant = 0
        self.state_db = os.path.realpath(tree.state_db)
        self.procs: list[DaemonProcess] = []
        self.anomalies: list[str] = []
        self.temp_claims: list[str] = []
        self.claims: collections.Counter[str] = collections.Counter()  # file.claimed, by name
        self.ends: collections.Counter[str] = collections.Counter()  # file.archived/.failed
        self.requeues: collections.Counter[str] = collections.Counter()  # file.requeued
        kinds = [k for k, _ in KINDS]
        self.first = rng.sample(kinds, len(kinds))  # every kind once first, in a random order
        self.aims: dict[str, Callable[[DaemonProcess, LogTail], bool]] = {
            "random": self._aim_random,
            "recovery": self._aim_recovery,
            "stage": self._aim_stage,
            "backoff": self._aim_backoff,
            "reload": self._aim_reload,
            "crashpoint": self._aim_crashpoint,
            "retry": self._aim_retry,
        }

    def next_kind(self, run: int) -> str:
        if run <= len(self.first):
            return self.first[run - 1]
        return self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]

    def cycle(self, run: int, kind: str) -> None:
        """Start a daemon, wait for the moment KIND aims at, SIGKILL it; learn from its log."""
        env: dict[str, str] = {}
        if kind == "crashpoint" or (kind == "retry" and self.rng.random() < 0.5):
            points = CRASH_POINTS if kind == "crashpoint" else RETRY_POINTS
            point = f"{self.rng.choice(points)}#{self.rng.randint(1, 3)}"
            self.figures.points.append(point)
            env["DROPLINE_CRASH_AT"] = point
        proc = DaemonProcess(self.tree, env=env, log_name=f"run-{run:03d}.log")
        self.procs.append(proc)
        self.figures.starts += 1
        tail = LogTail(proc.log_path)
        try:
            aimed = self.aims[kind](proc, tail)
        finally:
            sent = proc.proc.poll() is None
            proc.kill()
        code = proc.proc.returncode
        assert code == -signal.SIGKILL, (
            f"run {run} ({kind}, {env}) exited with status {code} before it was killed:\n"
            f"{proc.text()[-4000:]}\n{self.figures.summary()}"
        )
        self.figures.kills += 1
        self.figures.kinds[kind] += 1
        if not aimed:
            self.figures.missed[kind] += 1
        if not sent:
            self.figures.self_kills += 1
        tail.poll()
        self.learn(run, tail.events)

    def learn(self, run: int, events: list[dict[str, Any]]) -> None:
        """Figures and anomalies from one run's events (the final run's too)."""
        last: dict[str, str] = {}  # item -> its last stage event
        ready = False
        reloading = False
        for e in events:
            event = e.get("event", "")
            if event == "daemon.ready":
                ready = True
            elif event == "daemon.reloading":
                reloading = True
            elif event == "daemon.reloaded":
                self.figures.reloaded += 1
                reloading = False
            elif event == "recovery.done":
                for key, value in e.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        self.figures.recovery[key] += value
            elif event == "stage.retrying":
                self.figures.retries += 1
            elif event == "file.claimed":
                self.claims[str(e.get("file"))] += 1
                if _is_temporary(str(e.get("file", ""))):
                    self.temp_claims.append(f"run {run}: {e}")
            elif event in ("file.archived", "file.failed"):
                self.ends[str(e.get("file"))] += 1
            elif event == "file.busy":
                if "kept in working/" in str(e.get("detail")):
                    self.figures.kept += 1
                else:
                    self.figures.put_back += 1
            elif event == "file.requeued":
                self.requeues[str(e.get("file"))] += 1
                self.figures.requeued += 1
            if event in ANOMALIES or e.get("level") == "critical":
                self.anomalies.append(f"run {run}: {e}")
            if event.startswith("stage.") and "item" in e:
                last[str(e["item"])] = event
        if run and not ready:
            self.figures.before_ready += 1
        if "stage.started" in last.values():
            self.figures.during_stage += 1
        if "stage.retrying" in last.values():
            self.figures.during_backoff += 1
        if reloading:
            self.figures.during_reload += 1

    def check_output(self, final_log: Path) -> None:
        """Read every run's log again once all is over (late output included)."""
        logs = [proc.log_path for proc in self.procs] + [final_log]
        for run, path in enumerate(logs, 1):
            tail = LogTail(path)
            tail.poll()
            raw = [str(e.get("text")) for e in tail.events if e["event"] == "<raw>"]
            self._raw_output(run if path != final_log else 0, raw)

    def _raw_output(self, run: int, lines: list[str]) -> None:
        """Anything not a JSON event is an anomaly (a traceback, a stray print)."""
        if lines:
            text = "\n".join(lines)
            self.anomalies.append(f"run {run}: output that is not a JSON event:\n{text}")

    # Each aim waits for its moment and returns whether it came; the kill follows.

    def _aim_random(self, proc: DaemonProcess, tail: LogTail) -> bool:
        time.sleep(self.rng.uniform(0.05, 1.0))  # a random moment: the sleep is the point
        return True

    def _aim_recovery(self, proc: DaemonProcess, tail: LogTail) -> bool:
        # The state database is opened just before recovery runs, which takes some
        # milliseconds: most of these kills come within them, the others just after.
        came = _poll(
            lambda: _holds_open(proc.proc.pid, self.state_db), AIM_TIMEOUT, proc, interval=0.0005
        )
        time.sleep(self.rng.uniform(0.0, 0.006 if self.rng.random() < 0.7 else 0.05))
        if came:
            tail.poll()
            if not any(e.get("event") == "daemon.ready" for e in tail.events):
                self.figures.in_recovery += 1
        return came

    def _aim_stage(self, proc: DaemonProcess, tail: LogTail) -> bool:
        came = _poll(lambda: tail.seen("stage.started"), AIM_TIMEOUT, proc)
        time.sleep(self.rng.uniform(0.0, 0.02))
        return came

    def _aim_backoff(self, proc: DaemonProcess, tail: LogTail) -> bool:
        came = _poll(lambda: tail.seen("stage.retrying"), AIM_TIMEOUT, proc)
        time.sleep(self.rng.uniform(0.0, 0.1))  # the first backoff is 0.1 to 0.2 s
        return came

    def _aim_reload(self, proc: DaemonProcess, tail: LogTail) -> bool:
        # Before its handlers are installed SIGHUP would end the daemon: wait for READY.
        if not _poll(lambda: tail.seen("daemon.ready"), AIM_TIMEOUT, proc):
            return False
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.variant += 1
        _write_config(self.tree, self.seen_dir, self.variant)
        proc.signal(signal.SIGHUP)
        self.figures.hups += 1
        # A reload takes a few milliseconds: kill within them, or just after.
        choice = self.rng.random()
        if choice < 0.4:
            came = _poll(lambda: tail.seen("daemon.reloading"), 1.0, proc, interval=0.0005)
            time.sleep(self.rng.uniform(0.0, 0.002))
            return came
        time.sleep(self.rng.uniform(0.0, 0.004 if choice < 0.8 else 0.03))
        return True

    def _aim_retry(self, proc: DaemonProcess, tail: LogTail) -> bool:
        """`dropline retry --all-failed` beside the daemon; killed while it requeues."""
        if not _poll(lambda: tail.seen("daemon.ready"), AIM_TIMEOUT, proc):
            return False
        command = run_cli(
            "retry", "--all-failed", "--wait", "1", "--json", "--config", str(self.tree.config)
        )
        self.figures.retry_commands += 1
        if command.returncode not in (0, 1) or "Traceback" in command.stderr:
            self.anomalies.append(f"dropline retry exited {command.returncode}: {command.stderr}")
        came = _poll(lambda: tail.seen("file.requeued"), 1.0, proc)
        time.sleep(self.rng.uniform(0.0, 0.05))
        return came

    def _aim_crashpoint(self, proc: DaemonProcess, tail: LogTail) -> bool:
        # Ends early when the daemon reaches the armed point and kills itself.
        _poll(lambda: False, self.rng.uniform(0.3, 1.5), proc)
        return proc.proc.poll() is not None


def _tier() -> Tier:
    return LONG if os.environ.get("DROPLINE_SOAK", "") == "long" else SHORT


def _as_bytes(value: Any) -> bytes:
    return os.fsencode(value) if isinstance(value, str) else bytes(value)


def _check_rewrites(tree: Tree, drops: list[Drop], about: str) -> set[str]:
    """The names rewritten in place: each version the daemon took ended once, complete,
    in archive/ (or in failed/ as modified after its claim: the writer truncated it
    just before the claim and wrote after it), each with its row; the last always.
    Returns the names of their files in failed/."""
    rewritten = {d.name: d for d in drops if d.versions}
    ended = [p for p in tree.all_final() if _dropped_as(p.name) in rewritten]
    final: dict[str, list[bytes]] = collections.defaultdict(list)
    failed: set[str] = set()
    for path in ended:
        final[_dropped_as(path.name)].append(path.read_bytes())
        if path.parent == tree.failed:
            doc = json.loads((tree.failed / f"{path.name}.error.json").read_text())
            assert "modified after it was claimed" in doc["error"], f"{path}: {doc}{about}"
            failed.add(path.name)
    for name, drop in rewritten.items():
        contents = final.get(name, [])
        assert drop.data in contents, f"{name}: its last version is not at its end{about}"
        assert set(contents) <= set(drop.versions), f"{name}: a version never written{about}"
        assert len(set(contents)) == len(contents), f"{name}: a version ended twice{about}"
    # The hashes are not compared: the claim of a version the writer has just
    # truncated records an empty file (telling a file held open is not the
    # claim protocol's part); each row names one file, each file has its row.
    rows = [
        (state, d, n)
        for raw, state, d, n in tree.query("SELECT name, state, final_dir, final_name FROM items")
        if os.fsdecode(_as_bytes(raw)) in rewritten
    ]
    assert {state for state, _, _ in rows} <= {"archived", "failed"}, f"{rows[:10]}{about}"
    ends = sorted(
        os.path.join("failed" if state == "failed" else "archive", d or "", _str(n))
        for state, d, n in rows
    )
    files = sorted(os.path.relpath(p, tree.data) for p in ended)
    assert ends == files, f"rows and files of rewritten names differ{about}"
    return failed


def _str(value: Any) -> str:
    return os.fsdecode(_as_bytes(value)) if value is not None else ""


def _dropped_as(file_name: str) -> str:
    """The name a file in archive/ or failed/ was dropped under (a taken name got .ITEMID)."""
    match = SUFFIXED.fullmatch(file_name)
    return f"{match['stem']}{match['ext']}" if match else file_name


def _check_final(tree: Tree, drops: list[Drop], soak: Soak, final_log: str) -> None:
    """Every file once, intact, where it belongs; the database intact and consistent."""
    figures = soak.figures
    about = "\n" + figures.summary()
    rewritten = {d.name for d in drops if d.versions}
    failed_rewrites = _check_rewrites(tree, drops, about)
    by_name = {d.name: d for d in drops if not d.versions}
    expect_failed = {d.name for d in drops if d.category in EXPECT_FAILED}

    final = [p for p in tree.all_final() if _dropped_as(p.name) not in rewritten]
    counts = collections.Counter(p.name for p in final)
    twice = sorted(n for n, c in counts.items() if c > 1)
    assert not twice, f"files in two places: {twice[:20]}{about}"
    extra = sorted(set(counts) - set(by_name))
    assert not extra, f"files that were never dropped (a second copy?): {extra[:20]}{about}"
    missing = sorted(set(by_name) - set(counts))
    assert not missing, f"files lost: {missing[:20]}{about}"
    differ = [p.name for p in final if p.read_bytes() != by_name[p.name].data]
    assert not differ, f"files not byte-identical: {differ[:20]}{about}"

    failed_names = set(tree.failed_files()) - failed_rewrites
    assert failed_names == expect_failed, (
        f"failed unexpectedly: {sorted(failed_names - expect_failed)[:20]}; "
        f"not failed: {sorted(expect_failed - failed_names)[:20]}{about}"
    )
    for name in sorted(failed_names):
        doc = json.loads((tree.failed / f"{name}.error.json").read_text())
        why = "permanent error" if by_name[name].category == "bad" else "no pipeline matches"
        assert why in doc["error"], f"{name}: {doc}{about}"
        assert doc["sha256"] == hashlib.sha256(by_name[name].data).hexdigest(), f"{name}{about}"
    in_failed = failed_names | failed_rewrites
    strays = sorted(
        p.name
        for p in tree.failed.iterdir()
        if not (p.name in in_failed or p.name.removesuffix(".error.json") in in_failed)
    )
    assert not strays, f"stray entries in failed/: {strays[:20]}{about}"
    assert not os.listdir(tree.incoming), f"left in incoming/: {os.listdir(tree.incoming)[:20]}"
    assert not os.listdir(tree.working), f"left in working/: {os.listdir(tree.working)[:20]}"

    assert tree.query("PRAGMA integrity_check") == [("ok",)], about
    all_rows = tree.query("SELECT name, working_name, state, sha256, metadata FROM items")
    rows = [r for r in all_rows if os.fsdecode(_as_bytes(r[0])) not in rewritten]
    names = collections.Counter(_as_bytes(r[0]) for r in rows)
    assert not [n for n, c in names.items() if c > 1], f"a name with two items{about}"
    temporary = [r for r in rows if _is_temporary(os.fsdecode(_as_bytes(r[0])))]
    temporary += [r for r in rows if _is_temporary(os.fsdecode(_as_bytes(r[1])))]
    assert not temporary, f"temporary names claimed: {temporary[:10]}{about}"
    assert not soak.temp_claims, f"temporary names claimed: {soak.temp_claims[:10]}{about}"
    states = collections.Counter(r[2] for r in rows)
    plain = len(by_name)
    assert states == {"archived": plain - len(expect_failed), "failed": len(expect_failed)}, (
        f"item states {dict(states)}{about}"
    )
    for raw_name, _, state, sha256, metadata in rows:
        drop = by_name[os.fsdecode(_as_bytes(raw_name))]
        assert state == ("failed" if drop.category in EXPECT_FAILED else "archived"), drop.name
        assert sha256 == hashlib.sha256(drop.data).hexdigest(), f"{drop.name}: hash{about}"
        if drop.category == "python":
            assert json.loads(metadata).get("paused") is True, f"{drop.name}: {metadata}{about}"
    open_attempts = tree.query("SELECT item_id, stage FROM attempts WHERE ended_at IS NULL")
    assert not open_attempts, f"attempts never ended: {open_attempts[:10]}{about}"
    assert not soak.anomalies, "\n".join(soak.anomalies[:20]) + about
    claimed_twice = sorted(n for n, c in soak.claims.items() if c > 1 and n not in rewritten)
    assert not claimed_twice, f"file.claimed logged twice: {claimed_twice[:20]}{about}"
    # A failed file sent through again by `dropline retry` ends once more: each
    # retry is an event row, committed with the intent (a kill can lose the log
    # line of a requeue, never its row).
    retried = collections.Counter(
        os.fsdecode(_as_bytes(name))
        for (name,) in tree.query(
            "SELECT i.name FROM events e JOIN items i ON i.id = e.item_id WHERE e.event = 'retry'"
        )
    )
    assert all(soak.requeues[n] <= retried[n] for n in soak.requeues), f"requeues{about}"
    ended_twice = sorted(
        n for n, c in soak.ends.items() if c > 1 + retried[n] and n not in rewritten
    )
    assert not ended_twice, f"file.archived/failed logged twice: {ended_twice[:20]}{about}"
    assert figures.retries > 0, f"the flaky pipeline never retried{about}"
    assert "daemon.stopped" in final_log, final_log[-4000:]


def test_crash_soak(tree: Tree) -> None:
    """Dozens of SIGKILLs while thousands of files arrive, then a clean finish loses nothing."""
    tier = _tier()
    seed = int(os.environ.get("DROPLINE_SOAK_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    figures = Figures(seed, tier.name)
    print(f"\nsoak tier={tier.name} seed={seed}", flush=True)
    seen_dir = tree.root / "seen"
    seen_dir.mkdir()
    _write_config(tree, seen_dir, 0)

    drops = _plan(rng, tier.files, tier.rate)
    figures.files = len(drops)
    figures.categories.update(d.category for d in drops)
    figures.methods.update(d.method for d in drops)
    figures.held = sum(1 for d in drops if d.hold)
    figures.in_bursts = sum(1 for a, b in itertools.pairwise(drops) if a.at == b.at)

    soak = Soak(tree, rng, figures, seen_dir)
    writer = Writer(tree.incoming, drops)
    started = time.monotonic()
    writer.start()
    try:
        run = 0
        while figures.kills < tier.min_kills or writer.is_alive():
            run += 1
            soak.cycle(run, soak.next_kind(run))
    finally:
        writer.stop.set()
        writer.join(60)
        for proc in soak.procs:
            proc.kill()
    assert writer.error is None, f"the writer failed: {writer.error!r}"
    assert writer.written == len(drops)
    figures.soak_seconds = time.monotonic() - started

    started = time.monotonic()
    figures.starts += 1
    code = run_until_idle(tree, timeout=tier.drain_timeout)
    figures.drain_seconds = time.monotonic() - started
    final_log = (tree.root / "daemon.log").read_text(errors="replace")
    assert code == 0, f"the clean finish exited {code}:\n{final_log[-4000:]}\n{figures.summary()}"
    final = LogTail(tree.root / "daemon.log")
    final.poll()
    soak.learn(0, final.events)
    soak.check_output(tree.root / "daemon.log")

    print(figures.summary(), flush=True)
    _check_final(tree, drops, soak, final_log)
