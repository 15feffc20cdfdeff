"""One table of the results, the goals with PASS or MISS, the machine, as text and markdown.

Every figure comes from the run being reported; a goal whose figure is
missing (a workload skipped or failed) is SKIP or ERROR, never PASS.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..harness import REPO
from .measure import CLK_TCK, filesystem_of
from .stage_report import StageTable, build_table, stage_goals
from .subjects import DROPLINE, REFERENCES, Kind
from .workloads import Measurement, Results, Settings

DASH = "—"


@dataclass(frozen=True)
class Row:
    """A line of the table: a label and one cell per column."""

    label: str
    cells: list[str]
    section: bool = False  # a heading line


@dataclass(frozen=True)
class Goal:
    """A goal of the issue, its figure in this run and whether it was met."""

    text: str
    measured: str
    verdict: str  # PASS, MISS, SKIP, ERROR


@dataclass(frozen=True)
class Report:
    """What gets printed: the header, the table, the goals, the notes."""

    machine: str
    columns: list[str]
    rows: list[Row]
    goals: list[Goal]
    notes: list[str]
    stages: StageTable | None = None  # the stage workloads' own table, when they ran

    def text(self) -> str:
        """Plain text, columns aligned, for a terminal."""
        header = ["", *self.columns]
        lines = [[r.label, *r.cells] for r in self.rows if not r.section]
        widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        out = [f"machine: {self.machine}", "", fmt(header)]
        out.append("  ".join("-" * w for w in widths))
        for row in self.rows:
            out.append(f"[{row.label}]" if row.section else fmt([row.label, *row.cells]))
        if self.stages is not None:
            out += ["", self.stages.text().rstrip("\n")]
        out += ["", "goals (dropline, default durable settings):"]
        for goal in self.goals:
            out.append(f"  {goal.verdict:5}  {goal.text}: {goal.measured}")
        out += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        """The same as a markdown document, to paste into the README."""
        out = [f"Machine: {self.machine}", ""]
        out.append("| | " + " | ".join(self.columns) + " |")
        out.append("|---|" + "---:|" * len(self.columns))
        for row in self.rows:
            if row.section:
                out.append(f"| **{row.label}** |" + " |" * len(self.columns))
            else:
                out.append(f"| {row.label} | " + " | ".join(row.cells) + " |")
        if self.stages is not None:
            out += ["", self.stages.markdown().rstrip("\n")]
        out += ["", "| goal | this run | |", "|---|---|---|"]
        for goal in self.goals:
            out.append(f"| {goal.text} | {goal.measured} | **{goal.verdict}** |")
        out += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(out) + "\n"


# --- the machine --------------------------------------------------------------


def machine_line(workdir: Path) -> str:
    """CPUs, CPU model, kernel, Python, filesystem of the data, dropline's commit, date."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fstype, device = filesystem_of(workdir)
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Linux {platform.release()}; Python {platform.python_version()}; "
        f"data in {workdir} on {fstype} ({device}); dropline {_revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def _revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# --- cells ----------------------------------------------------------------------

Getter = Callable[[Measurement], float | None]


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return DASH
    return f"{a / b:.2f}x"


def _cell(m: Measurement | None, get: Getter, spec: str, first: bool) -> str:
    if m is None:
        return DASH
    if m.error:
        return "error" if first else DASH
    if m.note:
        return m.note if first else DASH
    return _num(get(m), spec)


def _fps(m: Measurement) -> float | None:
    return m.files_per_s


def _ready_ms(m: Measurement) -> float | None:
    return None if m.ready_s is None else m.ready_s * 1000


def _cpu(m: Measurement) -> float | None:
    return m.cpu_ms_per_file


def _startup_ms(m: Measurement) -> float | None:
    return None if m.startup_cpu_s is None else m.startup_cpu_s * 1000


def _rss(m: Measurement) -> float | None:
    return m.maxrss_mib


def _p(q: float) -> Getter:
    def get(m: Measurement) -> float | None:
        return m.latency(q)

    return get


class _Table:
    """Builds the rows: one column per subject, then dropline's ratio to each reference."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.kinds: tuple[Kind, ...] = results.kinds
        self.rows: list[Row] = []

    @property
    def columns(self) -> list[str]:
        return [k.title for k in self.kinds] + [f"÷ {k.title}" for k in REFERENCES]

    def section(self, label: str) -> None:
        self.rows.append(Row(label, [""] * len(self.columns), section=True))

    def metric(
        self, label: str, source: dict[str, Measurement], get: Getter, spec: str, first: bool
    ) -> None:
        cells = []
        for kind in self.kinds:
            if kind.key in self.results.unavailable:
                cells.append(self.results.unavailable[kind.key] if first else DASH)
            else:
                cells.append(_cell(source.get(kind.key), get, spec, first))
        ours = source.get(DROPLINE.key)
        mine = get(ours) if ours is not None and ours.ok else None
        for ref in REFERENCES:
            theirs = source.get(ref.key)
            cells.append(_ratio(mine, get(theirs) if theirs is not None and theirs.ok else None))
        self.rows.append(Row(label, cells))

    def numbers(self, label: str, values: dict[str, float | None], spec: str) -> None:
        """A row of plain figures, one per subject (no ratios)."""
        cells = [_num(values.get(kind.key), spec) for kind in self.kinds]
        cells += [DASH] * len(REFERENCES)
        self.rows.append(Row(label, cells))

    def dropline_only(self, label: str, value: str) -> None:
        cells = [value] + [DASH] * (len(self.columns) - 1)
        self.rows.append(Row(label, cells))


def build(results: Results) -> Report:
    """The report of RESULTS."""
    s = results.settings
    t = _Table(results)
    n, big = f"{s.backlog:,}", f"{s.big if s.big > 0 else Settings().big:,}"

    runs = f", median of {s.backlog_runs} runs" if s.backlog_runs > 1 else ""
    t.section(f"backlog: {n} files of {s.file_size} B waiting at start{runs}")
    t.metric("files/s, READY → all archived", results.backlog, _fps, ",.0f", True)
    t.metric("READY after start, ms", results.backlog, _ready_ms, ",.0f", False)
    t.metric("CPU per file after READY, ms", results.backlog, _cpu, ".3f", False)
    t.metric("CPU to READY (start-up), ms", results.backlog, _startup_ms, ",.0f", False)
    t.metric("peak RSS, MiB", results.backlog, _rss, ".1f", False)

    t.section(f"live: {s.rate:g} files/s written in place for {s.live_seconds:g} s")
    t.metric("latency close() → archive/, p50 ms", results.live, _p(0.5), ".2f", True)
    t.metric("latency p99, ms", results.live, _p(0.99), ".2f", False)
    t.metric("latency max, ms", results.live, _p(1.0), ".2f", False)
    t.metric("CPU per file after READY, ms", results.live, _cpu, ".3f", False)
    t.metric("peak RSS, MiB", results.live, _rss, ".1f", False)

    t.section(f"big backlog: {big} files waiting at start")
    if s.run_big:
        t.metric("files/s, READY → all archived", results.big, _fps, ",.0f", True)
        t.metric("READY after start, ms", results.big, _ready_ms, ",.0f", False)
        t.metric("CPU per file after READY, ms", results.big, _cpu, ".3f", False)
        t.metric("peak RSS, MiB", results.big, _rss, ".1f", False)
        scale = {
            key: _div(m.files_per_s, small.files_per_s if small else None)
            for key, m in results.big.items()
            for small in [results.backlog.get(key)]
        }
        t.numbers(f"files/s {big} ÷ files/s {n}", scale, ".2f")
    else:
        t.dropline_only("files/s, READY → all archived", "skipped")

    t.section("dropline alone")
    stalled = results.live_stalled
    if stalled is not None:
        what = f"live {s.rate:g}/s, notify reader stalled {s.notify_stall:g} s"
        t.dropline_only(f"{what}: latency p50 ms", _measured(stalled, _p(0.5), ".2f"))
        t.dropline_only(f"{what}: latency p99 ms", _measured(stalled, _p(0.99), ".2f"))
        t.dropline_only(f"{what}: latency max ms", _measured(stalled, _p(1.0), ".2f"))
        t.dropline_only(
            f"of them, the {len(stalled.stalled_ms):,} closed during the stall: p99 ms",
            _measured(stalled, lambda m: m.latency(0.99, stalled=True), ".2f"),
        )
    sig = results.sigterm
    if sig is not None:
        t.dropline_only(f"SIGTERM while draining {n}: s to exit", _num(sig.exit_s, ".2f"))
        t.dropline_only("archived when signalled", f"{sig.archived_at_signal:,}")
        t.dropline_only(
            "then to the end: archived once, identical",
            f"{sig.identical:,}/{sig.files:,}" + ("" if sig.lossless else " PROBLEM"),
        )
    cpu = results.cpu_stage
    if cpu is not None:
        what = f"CPU-bound stage ({cpu.burn_ms:g} ms/file)"
        t.dropline_only(f"{what}, 1 worker: files/s", _measured(cpu.one, _fps, ",.1f"))
        t.dropline_only(f"{what}, 2 workers: files/s", _measured(cpu.two, _fps, ",.1f"))
        t.dropline_only("2 workers ÷ 1 worker", _num(cpu.speedup, ".2f") + "x")
        t.dropline_only(
            "the same calls in 2 plain processes ÷ 1 (the machine's own scaling)",
            _num(cpu.plain_speedup, ".2f") + "x",
        )

    stage_targets = [Goal(*g) for g in stage_goals(results.stages)]
    return Report(
        machine_line(results.workdir),
        t.columns,
        t.rows,
        goals(results) + stage_targets,
        notes(results),
        build_table(results.stages) if results.stages is not None else None,
    )


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _measured(m: Measurement, get: Getter, spec: str) -> str:
    if m.error:
        return f"error: {m.error[:80]}"
    return _num(get(m), spec)


# --- goals ------------------------------------------------------------------------


def _verdict(value: float | None, limit: float, *, at_most: bool, broken: bool = False) -> str:
    if broken:
        return "ERROR"
    if value is None:
        return "SKIP"
    ok = value <= limit if at_most else value >= limit
    return "PASS" if ok else "MISS"


def goals(results: Results) -> list[Goal]:
    """The issue's goals, each with this run's figure and PASS, MISS, SKIP or ERROR."""
    s = results.settings
    n, big = f"{s.backlog:,}", f"{s.big if s.big > 0 else Settings().big:,}"
    ours = results.backlog.get(DROPLINE.key)
    bare = results.backlog.get("bare")
    live = results.live.get(DROPLINE.key)
    large = results.big.get(DROPLINE.key)
    out: list[Goal] = []

    def add(
        text: str,
        value: float | None,
        limit: float,
        shown: str,
        watched: list[Measurement | None],
        *,
        at_most: bool,
    ) -> None:
        broken = value is None and any(m is not None and m.error for m in watched)
        verdict = _verdict(value, limit, at_most=at_most, broken=broken)
        out.append(Goal(text, DASH if value is None else shown, verdict))

    ours_fps = ours.files_per_s if ours else None
    bare_fps = bare.files_per_s if bare else None
    ratio = _div(ours_fps, bare_fps)
    add(
        f"backlog {n}: files/s ≥ 0.5 x the bare loop's",
        ratio,
        0.5,
        f"{ratio or 0:.2f}x ({ours_fps or 0:,.0f} vs {bare_fps or 0:,.0f} files/s)",
        [ours, bare],
        at_most=False,
    )
    p50, p99 = (live.latency(0.5), live.latency(0.99)) if live else (None, None)
    add(
        f"live {s.rate:g}/s: latency p50 ≤ 3 ms",
        p50,
        3.0,
        f"{p50 or 0:.2f} ms",
        [live],
        at_most=True,
    )
    add(
        f"live {s.rate:g}/s: latency p99 ≤ 50 ms",
        p99,
        50.0,
        f"{p99 or 0:.2f} ms",
        [live],
        at_most=True,
    )
    stalled = results.live_stalled
    stalled_p99 = stalled.latency(0.99) if stalled else None
    add(
        f"live {s.rate:g}/s, notify reader stalled {s.notify_stall:g} s: latency p99 ≤ 50 ms",
        stalled_p99,
        50.0,
        f"{stalled_p99 or 0:.2f} ms",
        [stalled],
        at_most=True,
    )
    cpu = ours.cpu_ms_per_file if ours else None
    add(
        f"backlog {n}: CPU per file after READY ≤ 0.15 ms",
        cpu,
        0.15,
        f"{cpu or 0:.3f} ms",
        [ours],
        at_most=True,
    )
    rss = ours.maxrss_mib if ours else None
    add(f"backlog {n}: peak RSS ≤ 60 MiB", rss, 60.0, f"{rss or 0:.1f} MiB", [ours], at_most=True)
    ready = large.ready_s if large and large.ok else None
    add(f"{big} waiting: READY ≤ 1 s", ready, 1.0, f"{ready or 0:.3f} s", [large], at_most=True)
    big_rss = large.maxrss_mib if large else None
    add(
        f"{big} waiting: peak RSS ≤ 100 MiB",
        big_rss,
        100.0,
        f"{big_rss or 0:.1f} MiB",
        [large],
        at_most=True,
    )
    scale = _div(large.files_per_s if large else None, ours_fps)
    add(
        f"files/s over {big} ≥ 0.8 x over {n}",
        scale,
        0.8,
        f"{scale or 0:.2f}x",
        [large, ours],
        at_most=False,
    )

    sig = results.sigterm
    if sig is None:
        out.append(Goal("SIGTERM while draining: exit ≤ 1 s, nothing lost", DASH, "SKIP"))
    else:
        drained_first = sig.archived_at_signal >= sig.files
        measured = (
            f"{DASH if sig.exit_s is None else f'{sig.exit_s:.2f} s'}, "
            f"{sig.identical:,}/{sig.files:,} archived once and identical"
        )
        if sig.exit_s is None or sig.exit_code is None:
            verdict = "ERROR"
        elif drained_first:
            verdict = "SKIP"
            measured += " (the backlog had drained before the signal)"
        else:
            verdict = "PASS" if sig.exit_s <= 1.0 and sig.lossless else "MISS"
        out.append(Goal("SIGTERM while draining: exit ≤ 1 s, nothing lost", measured, verdict))

    cs = results.cpu_stage
    speedup = cs.speedup if cs else None
    add(
        "CPU-bound Python stage: 2 workers ≥ 1.7 x the files/s of 1",
        speedup,
        1.7,
        f"{speedup or 0:.2f}x"
        + (
            f" ({cs.one.files_per_s or 0:.1f} → {cs.two.files_per_s or 0:.1f} files/s;"
            f" plain processes here: {cs.plain_speedup or 0:.2f}x)"
            if cs
            else ""
        ),
        [cs.one, cs.two] if cs else [],
        at_most=False,
    )
    return out


# --- notes ------------------------------------------------------------------------


def notes(results: Results) -> list[str]:
    """How the figures were taken, and anything that went wrong."""
    s = results.settings
    out = [
        "columns: bare = the bare rename loop (no fsync, no state); naive = durable with a "
        "directory fsync and a SQLite commit per step of each file; batched = the same by "
        "batches of up to 256; inotifywait = `inotifywait | while read; mv`; "
        "÷ X = dropline's figure divided by X's (files/s: higher is better; the rest: lower)",
        "dropline runs with its default configuration except: paths, archive_layout flat, "
        "log_format json (to a file), settle_time 0s for the backlogs (files found by the "
        "start-up scan are otherwise held for settle_time from their mtime); pipeline "
        '`match: "*"` with no stages',
        "files/s = files ÷ (READY → exit of a run that ends when all are in archive/: "
        "dropline --exit-when-idle, the loops --count N); READY is timed from Popen",
        "CPU from wait4() at exit (children included); CPU to READY read from /proc at "
        f"READY (in ticks of {1000 / CLK_TCK:.0f} ms); CPU per file = (total - that) ÷ files; "
        "peak RSS = the highest sum of VmHWM over the living processes of the subject's "
        "process group (dropline: the daemon and its mover), sampled every 20 ms "
        "(wait4's ru_maxrss counts the parent's memory before exec)",
        f"latency by {results.latency_method}: "
        + (
            "inotify on archive/ stamps each arrival (a rename's ctime is too coarse here)"
            if results.latency_method == "inotify"
            else "the archived file's ctime (set by the rename, checked finely at start)"
        )
        + "; the writer stamps each close(); dropline runs with its default settle_time "
        "in the live run and gets SIGTERM at the end",
        "the Python loops poll incoming/ every 0.2 ms when idle; the naive and batched loops: "
        "SQLite WAL, synchronous=FULL, per file (or per batch of ≤ 256): rename, fsync "
        "working/, INSERT+COMMIT, rename, fsync archive/, UPDATE+COMMIT",
        "the inotifywait loop runs two mv processes per file; it sees events only, so a "
        "backlog present at start is never moved",
    ]
    stalled = results.live_stalled
    if stalled is not None:
        out.append(
            f"notify reader stalled: the live run again, dropline alone (with WATCHDOG_USEC "
            f"10 s, as under the installed unit); in the middle of it the benchmark's notify "
            f"socket stops reading for {s.notify_stall:g} s (measured "
            f"{stalled.notify_stalled_s or 0:.2f} s) with its queue filled, as PID 1's is "
            "during a daemon-reload on a busy host"
        )
    else:
        out.append("notify reader stalled: skipped (BENCH_NOTIFY_STALL=0, or BENCH_ONLY)")
    if s.run_big:
        created = (
            f", created in {results.big_created_s:.0f} s"
            if results.big_created_s is not None
            else ""
        )
        out.append(
            f"big backlog: {s.big:,} files made once (not timed{created}); dropline ran first "
            "on them, then each loop got the previous archive/ renamed to its incoming/"
        )
    else:
        out.append("big backlog skipped (BENCH_QUICK=1 or --quick, or BENCH_ONLY)")
    if s.only:
        out.append(f"only {', '.join(sorted(s.only))} (BENCH_ONLY): the rest skipped")
    cs = results.cpu_stage
    if cs is not None:
        out.append(
            f"CPU-bound stage: pure Python, {cs.rounds:,} rounds ≈ {cs.burn_ms:g} ms here, "
            "isolation: process (the default), workers 1 then 2"
        )
    for key, why in results.unavailable.items():
        out.append(f"{key}: {why} (apt-get install inotify-tools)")
    for workload, m in results.measurements():
        if m.error:
            out.append(f"ERROR {workload} {m.subject}: {m.error}")
    if results.sigterm is not None:
        for problem in results.sigterm.problems:
            out.append(f"ERROR sigterm: {problem}")
    out.append(f"the whole benchmark took {results.seconds:.0f} s; {sys.executable}")
    return out
