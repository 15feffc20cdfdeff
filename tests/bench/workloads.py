"""The workloads, run on every subject in turn, and the results they produce.

- backlog: N files of 1 KiB waiting in incoming/ before the subject starts;
  files/s is N over the time from READY to the subject's exit once all N are
  in archive/ (the time to READY is reported on its own);
- live: a writer writes 1 KiB files in place at a fixed rate, stamping each
  ``close()``; latency is from that close to the file's arrival in archive/
  (inotify on archive/, or the file's ctime where renames set it finely);
- the big backlog (a million files): the same as the backlog;
- dropline alone: the live run again with the notify reader stalled (it stops
  reading, its queue full, as PID 1 does during a daemon-reload on a busy
  host) for a few seconds in the middle; SIGTERM while draining (time to
  exit, then nothing lost), and a CPU-bound Python stage with one worker
  process and with two.

Nothing here asserts a figure: a run that goes wrong (a subject that exits
with an error, times out or loses files) is recorded with what went wrong.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..harness import Tree, make_tree
from . import cpu_stage
from .measure import (
    ArchiveWatch,
    NotifyReady,
    Subject,
    count_entries,
    create_files,
    ctime_marks_renames,
)
from .measure import payload as file_payload
from .stage_setup import STAGE_WORKLOADS, StageSettings
from .subjects import (
    DROPLINE,
    INOTIFYWAIT,
    KINDS,
    NAIVE,
    Kind,
    inotifywait_path,
    launch,
    write_dropline_config,
)

if TYPE_CHECKING:
    from .stage_bench import StageResults

READY_TIMEOUT = 60.0
# Each can be run alone (BENCH_ONLY), the others skipped.
WORKLOADS = ("backlog", "live", "stalled", "sigterm", "cpu", "big", *STAGE_WORKLOADS)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """What to run, and how big."""

    backlog: int = 20_000  # files waiting at start
    # Each subject drains the backlog this many times, in turn with the others;
    # the table shows each one's median run (a shared machine's noise is a few
    # percent from one run to the next).
    backlog_runs: int = 3
    big: int = 1_000_000  # the big backlog
    skip_big: bool = False  # BENCH_QUICK
    rate: float = 200.0  # live: files per second
    live_seconds: float = 10.0
    notify_stall: float = 4.0  # live, dropline alone: the notify reader stalled this long
    file_size: int = 1024
    sigterm_after: float = 0.5  # seconds after READY
    cpu_files: int = 200
    burn_ms: float = 20.0  # CPU per file of the CPU-bound stage
    inotify_grace: float = 2.0  # how long the inotifywait loop is watched on a backlog
    naive_big_limit: float = 300.0  # seconds the naive loop may be expected to take on `big`
    keep: bool = False  # keep the data trees
    only: frozenset[str] = frozenset()  # the workloads to run (WORKLOADS); empty: all
    stages: StageSettings = field(default_factory=StageSettings)  # the stage workloads' sizes

    def wants(self, workload: str) -> bool:
        return not self.only or workload in self.only

    @property
    def run_big(self) -> bool:
        return self.big > 0 and not self.skip_big and self.wants("big")

    @property
    def live_files(self) -> int:
        return max(1, round(self.rate * self.live_seconds))

    def drain_timeout(self, files: int) -> float:
        """A generous bound on any one drain (a subject slower than 50 files/s is stuck)."""
        return 120.0 + files / 50.0


@dataclass
class Measurement:
    """One subject on one workload."""

    subject: str
    files: int
    arrived: int = 0
    ready_s: float | None = None  # Popen to READY
    drain_s: float | None = None  # READY to exit, every file arrived
    cpu_s: float | None = None  # all CPU, children included (wait4)
    startup_cpu_s: float | None = None  # CPU until READY (/proc at READY)
    maxrss_kib: int | None = None  # peak VmHWM of the process or its group (sampled)
    exit_code: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    notify_stalled_s: float | None = None  # how long the notify reader was stalled
    stalled_ms: list[float] = field(default_factory=list)  # latencies of files closed meanwhile
    note: str = ""  # shown instead of figures: why there are none
    error: str = ""  # what went wrong

    @property
    def ok(self) -> bool:
        return not self.error and not self.note

    @property
    def files_per_s(self) -> float | None:
        if not self.ok or not self.drain_s:
            return None
        return self.files / self.drain_s

    @property
    def cpu_ms_per_file(self) -> float | None:
        """CPU after READY per file (start-up is reported apart)."""
        if not self.ok or self.cpu_s is None or not self.arrived:
            return None
        work = self.cpu_s - (self.startup_cpu_s or 0.0)
        return 1000.0 * max(0.0, work) / self.arrived

    @property
    def maxrss_mib(self) -> float | None:
        return None if self.maxrss_kib is None or not self.ok else self.maxrss_kib / 1024

    def latency(self, q: float, *, stalled: bool = False) -> float | None:
        """The Q-quantile (0..1) of the latencies in ms, nearest rank (STALLED: of the
        files closed while the notify reader was stalled)."""
        values = self.stalled_ms if stalled else self.latencies_ms
        if not self.ok or not values:
            return None
        ordered = sorted(values)
        rank = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
        return ordered[rank]


@dataclass
class SigtermResult:
    """SIGTERM to dropline while it drains a backlog, then a run to the end."""

    files: int
    archived_at_signal: int = 0
    exit_s: float | None = None
    exit_code: int | None = None
    archived_after: int = 0  # in archive/ after the second run
    identical: int = 0  # of those, byte-identical to what was dropped
    db_archived: int = 0  # items recorded as archived
    problems: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return (
            not self.problems
            and self.archived_after == self.files
            and self.identical == self.files
            and self.db_archived == self.files
        )


@dataclass
class CpuStageResult:
    """A CPU-bound Python stage (isolation: process) with one worker, then two."""

    files: int
    burn_ms: float
    rounds: int
    one: Measurement
    two: Measurement
    # The same calls in one plain process, then in two at once: the machine's own scaling.
    plain_one: float | None = None
    plain_two: float | None = None

    @property
    def speedup(self) -> float | None:
        a, b = self.one.files_per_s, self.two.files_per_s
        return b / a if a and b else None

    @property
    def plain_speedup(self) -> float | None:
        a, b = self.plain_one, self.plain_two
        return b / a if a and b else None


@dataclass
class Results:
    """Everything one benchmark run measured."""

    settings: Settings
    workdir: Path
    kinds: tuple[Kind, ...]
    unavailable: dict[str, str]  # subject key -> why it did not run
    latency_method: str = ""
    backlog: dict[str, Measurement] = field(default_factory=dict)
    live: dict[str, Measurement] = field(default_factory=dict)
    live_stalled: Measurement | None = None  # dropline, the notify reader stalled
    big: dict[str, Measurement] = field(default_factory=dict)
    big_created_s: float | None = None
    sigterm: SigtermResult | None = None
    cpu_stage: CpuStageResult | None = None
    stages: StageResults | None = None  # the stage workloads (stage_bench)
    seconds: float = 0.0

    def measurements(self) -> list[tuple[str, Measurement]]:
        """Every measurement, labelled by its workload."""
        out = [("backlog", m) for m in self.backlog.values()]
        out += [("live", m) for m in self.live.values()]
        if self.live_stalled is not None:
            out.append(("live, notify stalled", self.live_stalled))
        out += [("big", m) for m in self.big.values()]
        if self.cpu_stage is not None:
            out += [("cpu-1", self.cpu_stage.one), ("cpu-2", self.cpu_stage.two)]
        return out


# --- running one subject ------------------------------------------------------


def _wait_ready(subject: Subject, timeout: float = READY_TIMEOUT) -> bool:
    """Wait for READY; False if the subject exits first or TIMEOUT passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subject.ready.wait(0.02):
            return True
        if subject.exited is not None:
            return subject.ready.wait(0.1)
    return False


def _record_exit(m: Measurement, subject: Subject, timeout: float) -> bool:
    """Wait for SUBJECT to exit (killing it after TIMEOUT) and record its rusage."""
    exited = subject.finish(timeout)
    if exited is None:
        m.error = "could not be reaped"
        return False
    m.exit_code = exited.code
    m.cpu_s = exited.cpu
    m.maxrss_kib = exited.maxrss_kib
    m.startup_cpu_s = subject.ready.cpu_at
    if subject.ready.at is not None:
        m.ready_s = subject.ready.at - subject.started
        m.drain_s = exited.at - subject.ready.at
    if exited.code != 0:
        m.error = f"exit {exited.code}: {subject.log_tail(5)[-300:]}"
        return False
    return True


def _check_drained(m: Measurement, tree: Tree) -> None:
    m.arrived = count_entries(tree.archive)
    left = count_entries(tree.incoming) + count_entries(tree.working)
    failed = count_entries(tree.failed)
    if m.arrived != m.files or left or failed:
        m.error = m.error or (
            f"{m.arrived} of {m.files} in archive/, {left} left, {failed} in failed/"
        )


def drain(kind: Kind, tree: Tree, files: int, settings: Settings) -> Measurement:
    """Run KIND on the backlog waiting in TREE until all FILES are in archive/."""
    m = Measurement(kind.key, files)
    if kind is DROPLINE and not tree.config.exists():
        write_dropline_config(tree, settle_time="0s")
    subject = launch(kind, tree, count=files, exit_when_idle=True)
    if not _wait_ready(subject):
        subject.finish(0)
        m.error = f"no READY: {subject.log_tail(5)[-300:]}"
        return m
    if kind is INOTIFYWAIT:
        # It sees events only: give it a moment, then count what it moved.
        time.sleep(settings.inotify_grace)
        m.arrived = count_entries(tree.archive)
        subject.kill_group(signal.SIGTERM)
        subject.finish(5)
        m.ready_s = (subject.ready.at or subject.started) - subject.started
        m.note = (
            "none at start"
            if m.arrived == 0
            else f"{m.arrived:,} of {files:,} in {settings.inotify_grace:g} s"
        )
        return m
    if _record_exit(m, subject, settings.drain_timeout(files)):
        _check_drained(m, tree)
    else:
        m.arrived = count_entries(tree.archive)
    return m


def live(
    kind: Kind,
    tree: Tree,
    settings: Settings,
    method: str,
    *,
    notify_stall: float = 0.0,
    configure: Callable[[Tree], None] | None = None,
) -> Measurement:
    """Files written in place at settings.rate while KIND runs; latency close -> archive/.

    CONFIGURE writes dropline's configuration (default: the empty pipeline).
    With NOTIFY_STALL (dropline), the notify reader stops reading, its queue
    full, for that many seconds in the middle of the writing; dropline then
    runs with the installed unit's watchdog (WATCHDOG_USEC, 10 s) as well.
    """
    files = settings.live_files
    m = Measurement(kind.key, files)
    env: dict[str, str] = {}
    if kind is DROPLINE:
        if configure is not None:
            configure(tree)
        else:
            write_dropline_config(tree, settle_time=None)
        if notify_stall:
            env["WATCHDOG_USEC"] = "10000000"
    timers: list[threading.Timer] = []
    watch = ArchiveWatch(tree.archive) if method == "inotify" else None
    # The watcher's thread stamps an arrival once it holds the GIL: let it get it at once.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        subject = launch(kind, tree, count=files, exit_when_idle=False, env=env)
        if not _wait_ready(subject):
            subject.finish(0)
            m.error = f"no READY: {subject.log_tail(5)[-300:]}"
            return m
        ready = subject.ready
        if notify_stall and isinstance(ready, NotifyReady):
            # In the middle of the writing: as many files before the stall as after it.
            begin = max(0.0, (files / settings.rate - notify_stall) / 2)
            timers = [threading.Timer(begin, ready.stall_for, args=(notify_stall,))]
            for timer in timers:
                timer.start()
        closed = _write_at_rate(tree.incoming, files, settings.rate, settings.file_size)
        for timer in timers:
            timer.join()
        stall_ns = (0, 0)
        if notify_stall and isinstance(ready, NotifyReady) and ready.stalls:
            stalled, resumed = ready.stalls[-1]
            m.notify_stalled_s = resumed - stalled
            stall_ns = (int(stalled * 1e9), int(resumed * 1e9))
        deadline = time.monotonic() + 30.0

        def arrived() -> int:
            return watch.count if watch is not None else count_entries(tree.archive)

        while arrived() < files and time.monotonic() < deadline and subject.exited is None:
            time.sleep(0.05)
        if kind is DROPLINE:
            subject.send(signal.SIGTERM)
        if _record_exit(m, subject, 30.0):
            _check_drained(m, tree)
        m.drain_s = None  # the pace is the writer's: no files/s for a live run
        if watch is not None:
            if watch.overflowed:
                m.error = m.error or "inotify queue overflow on archive/: latencies incomplete"
            stamps = {name: at - closed[name][0] for name, at in watch.arrived.items()}
        else:
            stamps = {
                name: os.stat(tree.archive / name).st_ctime_ns - closed[name][1]
                for name in os.listdir(tree.archive)
            }
        m.latencies_ms = [ns / 1e6 for name, ns in stamps.items() if name in closed]
        m.stalled_ms = [
            ns / 1e6
            for name, ns in stamps.items()
            if name in closed and stall_ns[0] <= closed[name][0] < stall_ns[1]
        ]
        if len(m.latencies_ms) != files:
            m.error = m.error or f"{len(m.latencies_ms)} of {files} arrivals seen"
        return m
    finally:
        for timer in timers:
            timer.cancel()
        sys.setswitchinterval(switch)
        if watch is not None:
            watch.close()


def _write_at_rate(
    directory: Path, files: int, rate: float, size: int
) -> dict[str, tuple[int, int]]:
    """Write FILES files in place at RATE per second; each name's close (monotonic, real ns)."""
    closed: dict[str, tuple[int, int]] = {}
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    start = time.monotonic() + 0.05
    try:
        for i in range(files):
            name = f"live{i:07d}.dat"
            data = file_payload(name, size)
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            closed[name] = (time.monotonic_ns(), time.time_ns())
    finally:
        os.close(dir_fd)
    return closed


def median_run(runs: list[Measurement]) -> Measurement:
    """The run with the median files/s (the first broken one, if any broke)."""
    broken = [m for m in runs if not m.ok]
    if broken:
        return broken[0]
    ranked = sorted(runs, key=lambda m: m.files_per_s or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def _names(prefix: str, files: int) -> list[str]:
    return [f"{prefix}{i:07d}.dat" for i in range(files)]


def sigterm_while_draining(root: Path, settings: Settings) -> SigtermResult:
    """SIGTERM settings.sigterm_after s after READY; then --exit-when-idle; count everything."""
    files = settings.backlog
    result = SigtermResult(files)
    tree = make_tree(root)
    names = _names("t", files)
    create_files(tree.incoming, names, settings.file_size)
    write_dropline_config(tree, settle_time="0s")
    subject = launch(DROPLINE, tree, count=files, exit_when_idle=False)
    if not _wait_ready(subject):
        subject.finish(0)
        result.problems.append(f"no READY: {subject.log_tail(5)[-300:]}")
        return result
    time.sleep(settings.sigterm_after)
    result.archived_at_signal = count_entries(tree.archive)
    sent = time.monotonic()
    subject.send(signal.SIGTERM)
    exited = subject.finish(30.0)
    if exited is not None:
        result.exit_s = exited.at - sent
        result.exit_code = exited.code
        if exited.code != 0:
            result.problems.append(f"exit {exited.code} after SIGTERM")
    again = launch(DROPLINE, tree, count=files, exit_when_idle=True)
    after = again.finish(settings.drain_timeout(files))
    if after is None or after.code != 0:
        code = after.code if after else "none"
        result.problems.append(f"second run: exit {code}: {again.log_tail(5)[-300:]}")
    archived = sorted(os.listdir(tree.archive))
    result.archived_after = len(archived)
    dropped = set(names)
    if archived != names:
        missing = len(dropped - set(archived))
        extra = len(set(archived) - dropped)
        result.problems.append(f"{missing} missing from archive/, {extra} unexpected there")
    result.identical = sum(
        1
        for name in archived
        if name in dropped
        and (tree.archive / name).read_bytes() == file_payload(name, settings.file_size)
    )
    for where in (tree.incoming, tree.working, tree.failed):
        if count_entries(where):
            result.problems.append(f"{count_entries(where)} left in {where.name}/")
    try:
        rows = tree.query("SELECT state, count(*) FROM items GROUP BY state")
    except sqlite3.Error as exc:
        result.problems.append(f"state database: {exc}")
    else:
        counts = dict(rows)
        result.db_archived = int(counts.get("archived", 0))
        if set(counts) - {"archived"}:
            result.problems.append(f"items not archived in the database: {counts}")
    _discard(tree.root, settings)
    return result


BURN_PIPELINE = """
- name: burn
  match: "*"
  stages:
    - name: burn
      python: "cpu_stage:Burn"
      with: {{rounds: {rounds}}}
"""


def cpu_bound_stage(root: Path, settings: Settings, progress: Progress) -> CpuStageResult:
    """The CPU-bound stage on settings.cpu_files files with workers: 1, then workers: 2."""
    rounds = cpu_stage.calibrate(settings.burn_ms)
    runs: list[Measurement] = []
    for workers in (1, 2):
        tree = make_tree(root / f"cpu-{workers}")
        stages_dir = tree.root / "pipelines" / "burn"
        stages_dir.mkdir(parents=True)
        shutil.copyfile(Path(cpu_stage.__file__), stages_dir / "cpu_stage.py")
        write_dropline_config(
            tree,
            settle_time="0s",
            workers=workers,
            pipelines_dir=str(tree.root / "pipelines"),
            pipelines=BURN_PIPELINE.format(rounds=rounds),
        )
        create_files(tree.incoming, _names("c", settings.cpu_files), settings.file_size)
        m = drain(DROPLINE, tree, settings.cpu_files, settings)
        progress(f"cpu stage, {workers} worker(s): {_summary(m)}")
        runs.append(m)
        _discard(tree.root, settings)
    result = CpuStageResult(settings.cpu_files, settings.burn_ms, rounds, runs[0], runs[1])
    result.plain_one = cpu_stage.plain_processes(rounds, settings.cpu_files, 1)
    result.plain_two = cpu_stage.plain_processes(rounds, settings.cpu_files, 2)
    progress(
        f"cpu stage, plain processes: {result.plain_one or 0:,.1f} → "
        f"{result.plain_two or 0:,.1f} calls/s"
    )
    return result


def _summary(m: Measurement) -> str:
    if m.error:
        return f"ERROR {m.error}"
    if m.note:
        return m.note
    parts = []
    if m.files_per_s is not None:
        parts.append(f"{m.files_per_s:,.0f} files/s")
    if m.latencies_ms:
        parts.append(f"p50 {m.latency(0.5):.2f} ms p99 {m.latency(0.99):.2f} ms")
    if m.ready_s is not None:
        parts.append(f"READY {m.ready_s * 1000:.0f} ms")
    if m.cpu_ms_per_file is not None:
        parts.append(f"{m.cpu_ms_per_file:.3f} ms CPU/file")
    if m.maxrss_mib is not None:
        parts.append(f"RSS {m.maxrss_mib:.0f} MiB")
    return ", ".join(parts)


def _discard(path: Path, settings: Settings) -> None:
    if not settings.keep:
        shutil.rmtree(path, ignore_errors=True)


# --- the whole run ------------------------------------------------------------


def run_benchmark(settings: Settings, workdir: Path, progress: Progress | None = None) -> Results:
    """Every workload on every available subject, in WORKDIR; the results."""
    say: Progress = progress or (lambda text: print(f"bench: {text}", file=sys.stderr))
    workdir.mkdir(parents=True, exist_ok=True)
    unavailable: dict[str, str] = {}
    if inotifywait_path() is None:
        unavailable[INOTIFYWAIT.key] = "not installed"
    kinds = tuple(k for k in KINDS if k.key not in unavailable)
    results = Results(settings, workdir, KINDS, unavailable)
    began = time.monotonic()

    problem = ctime_marks_renames(workdir / "ctime-check")
    results.latency_method = "inotify" if problem else "ctime"
    say(f"latency by {results.latency_method}" + (f" ({problem})" if problem else ""))

    runs: dict[str, list[Measurement]] = {kind.key: [] for kind in kinds}
    for attempt in range(settings.backlog_runs if settings.wants("backlog") else 0):
        for kind in kinds:
            if attempt and kind is INOTIFYWAIT:
                continue  # it moves none of a backlog: once shows that
            tree = make_tree(workdir / f"backlog-{kind.key}")
            create_files(tree.incoming, _names("b", settings.backlog), settings.file_size)
            m = drain(kind, tree, settings.backlog, settings)
            say(f"backlog {settings.backlog:,}, {kind.title}, run {attempt + 1}: {_summary(m)}")
            runs[kind.key].append(m)
            _discard(tree.root, settings)
    for key, measured in runs.items():
        if measured:
            results.backlog[key] = median_run(measured)

    for kind in kinds if settings.wants("live") else ():
        tree = make_tree(workdir / f"live-{kind.key}")
        m = live(kind, tree, settings, results.latency_method)
        say(f"live {settings.rate:g}/s x {settings.live_files:,}, {kind.title}: {_summary(m)}")
        results.live[kind.key] = m
        _discard(tree.root, settings)

    if settings.notify_stall > 0 and settings.wants("stalled"):
        tree = make_tree(workdir / "live-stalled")
        m = live(
            DROPLINE, tree, settings, results.latency_method, notify_stall=settings.notify_stall
        )
        during = m.latency(0.99, stalled=True) or 0.0
        say(
            f"live {settings.rate:g}/s x {settings.live_files:,}, dropline, notify reader "
            f"stalled {m.notify_stalled_s or 0:.1f} s: {_summary(m)}; "
            f"the {len(m.stalled_ms):,} closed meanwhile: p99 {during:.2f} ms"
        )
        results.live_stalled = m
        _discard(tree.root, settings)

    if settings.wants("sigterm"):
        results.sigterm = s = sigterm_while_draining(workdir / "sigterm", settings)
        say(
            f"SIGTERM while draining: exit {s.exit_s or 0:.2f} s (status {s.exit_code}), "
            f"{s.archived_after:,}/{s.files:,} archived after restart"
            + (f"; PROBLEMS: {s.problems}" if s.problems else "")
        )

    if settings.wants("cpu"):
        results.cpu_stage = cpu_bound_stage(workdir, settings, say)

    # Imported here: the stage workloads build on this module's instruments.
    from .stage_bench import run_stage_workloads

    results.stages = run_stage_workloads(
        settings, settings.stages, workdir, results.latency_method, say
    )

    if settings.run_big:
        big_backlog(results, kinds, say)
    results.seconds = time.monotonic() - began
    return results


def big_backlog(results: Results, kinds: tuple[Kind, ...], say: Progress) -> None:
    """The big backlog, created once and handed from one subject's archive/ to the next.

    Creating a million files takes a while, so they are made once, for
    dropline (the first to run, on a freshly written incoming/); each later
    subject gets the previous one's archive/ renamed to its incoming/ (the
    same files, their directory filled by renames) and a fresh state.
    """
    settings = results.settings
    files = settings.big
    workdir = results.workdir
    order = [k for k in kinds if k is not INOTIFYWAIT]
    if INOTIFYWAIT in kinds:
        order.append(INOTIFYWAIT)  # it moves nothing present at start; last, to be sure
    previous: Tree | None = None
    for kind in order:
        naive_rate = results.backlog.get(NAIVE.key)
        if kind is NAIVE and naive_rate is not None and naive_rate.files_per_s:
            expected = files / naive_rate.files_per_s
            if expected > settings.naive_big_limit:
                results.big[kind.key] = Measurement(
                    kind.key,
                    files,
                    note=f"skipped (~{expected / 60:.0f} min)",
                )
                say(f"backlog {files:,}, {kind.title}: {results.big[kind.key].note}")
                continue
        tree = make_tree(workdir / f"big-{kind.key}")
        if previous is None:
            say(f"creating {files:,} files of {settings.file_size} bytes...")
            started = time.monotonic()
            create_files(tree.incoming, _names("m", files), settings.file_size)
            results.big_created_s = time.monotonic() - started
            say(f"created {files:,} files in {results.big_created_s:.0f} s (not measured)")
        else:
            if count_entries(previous.archive) != files:
                results.big[kind.key] = Measurement(
                    kind.key, files, error="not run: the previous run left the backlog incomplete"
                )
                continue
            tree.incoming.rmdir()
            os.rename(previous.archive, tree.incoming)
            shutil.rmtree(previous.root, ignore_errors=True)
        m = drain(kind, tree, files, settings)
        say(f"backlog {files:,}, {kind.title}: {_summary(m)}")
        results.big[kind.key] = m
        previous = tree
    if previous is not None:
        _discard(previous.root, settings)
