"""The stage workloads' table and the stage engine's targets, met or not.

One table: per workload, the script's files/s and dropline's (median of the
runs, with the spread min-max), their ratio, the CPU per file of each and
its ratio, and whether the outcome matched; then the latencies and the
memory.  Every figure comes from this run; a target whose figure is missing
is SKIP (not run) or ERROR (a run broke), never PASS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .stage_bench import Comparison, StageResults
from .stage_runs import StageRun

DASH = "—"
COLUMNS = [
    "the script",
    "dropline",
    "÷ script",
    "CPU/file script, ms",
    "CPU/file dropline, ms",
    "CPU ÷ script",
    "outcome",
]
TITLES = {
    "csv": "CSV orders: validate-csv + transform + sqlite-load",
    "command": "one command stage (/bin/true {path})",
    "python": "one trivial Python stage (isolation: process)",
    "cold": "empty pipeline from process start (÷ the bare loop)",
}
# (text, measured, verdict): report.Goal's fields.
GoalTuple = tuple[str, str, str]


@dataclass(frozen=True)
class StageTable:
    """The rows of the stage workloads' table and the notes under it."""

    heading: str
    rows: list[tuple[str, list[str]]]
    notes: list[str]

    def text(self) -> str:
        header = ["", *COLUMNS]
        lines = [[label, *cells] for label, cells in self.rows]
        widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        out = [self.heading, "", fmt(header), "  ".join("-" * w for w in widths)]
        out += [fmt(line) for line in lines]
        out += [f"  - {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        out = [f"**{self.heading}**", "", "| | " + " | ".join(COLUMNS) + " |"]
        out.append("|---|" + "---:|" * len(COLUMNS))
        out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in self.rows]
        out += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(out) + "\n"


def _fps(r: StageRun) -> float | None:
    return r.files_per_s


def _cpu(r: StageRun) -> float | None:
    return r.cpu_ms_per_file


def _spread(c: Comparison, subject: str, get: Callable[[StageRun], float | None], spec: str) -> str:
    values = c.figures(subject, get)
    if not values:
        return "error" if c.broken else DASH
    middle = c.median(subject, get)
    shown = format(middle, spec)
    if len(values) > 1:
        shown += f" ({format(min(values), spec)}-{format(max(values), spec)})"
    return shown


def _ratio(a: float | None, b: float | None) -> str:
    return DASH if a is None or not b else f"{a / b:.2f}x"


def ratio(c: Comparison | None, get: Callable[[StageRun], float | None]) -> float | None:
    """dropline's median over the script's median."""
    if c is None:
        return None
    a, b = c.median("dropline", get), c.median("script", get)
    return a / b if a is not None and b else None


def _comparison_row(c: Comparison) -> tuple[str, list[str]]:
    outcome = "same" if not c.problems and not c.broken else ("ERROR" if c.broken else "DIFFERS")
    label = f"{TITLES[c.name]}, {c.files:,} files, files/s"
    return label, [
        _spread(c, "script", _fps, ",.0f"),
        _spread(c, "dropline", _fps, ",.0f"),
        _ratio(c.median("dropline", _fps), c.median("script", _fps)),
        _spread(c, "script", _cpu, ".2f"),
        _spread(c, "dropline", _cpu, ".2f"),
        _ratio(c.median("dropline", _cpu), c.median("script", _cpu)),
        outcome,
    ]


def _alone(label: str, value: str) -> tuple[str, list[str]]:
    return label, [DASH, value] + [DASH] * (len(COLUMNS) - 2)


def build_table(s: StageResults) -> StageTable:
    """The table of S."""
    z = s.sizes
    rows = [_comparison_row(c) for c in s.comparisons.values()]
    lat = s.latency
    if lat is not None:
        what = f"latency close() → archive/ through one Python stage at {z.latency_rate:g}/s"
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            value = lat.latency(q)
            rows.append(_alone(f"{what}, {name} ms", "error" if lat.error else _num(value, ".2f")))
    f = s.fairness
    if f is not None:
        what = (
            f"passthrough file while {f.waiting:,} wait in a {z.slow_ms:g} ms stage, "
            f"close() → archive/ ({f.dropped} files)"
        )
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                _alone(f"{what}, {name} ms", "error" if f.error else _num(f.latency(q), ",.0f"))
            )
    for case in s.memory:
        m = case.run.memory
        label = f"memory, {case.name} pipeline (workers {case.workers}): peak PSS summed, MiB"
        rows.append(
            _alone(
                label, "error" if case.run.error or m is None else f"{m.peak_pss_kib / 1024:.1f}"
            )
        )
        if m is not None:
            for child in m.children():
                rows.append(
                    _alone(
                        f"  of it, child {child.name} (pid {child.pid}): RSS / PSS MiB",
                        f"{child.rss_kib / 1024:.1f} / {child.pss_kib / 1024:.1f}",
                    )
                )
    notes = [
        "files/s and CPU per file from process start (not READY) to exit, all files ended "
        "in archive/ or failed/; median of the runs (min-max), the script and dropline "
        "taking turns; CPU from wait4 (children included)",
        "the scripts (tests/bench/refs/): one process, the work in-process, shutil.move, "
        "one sqlite3 commit per file; dropline with its shipped defaults (workers, "
        "isolation, settle_time, archive layout), only paths, JSON log and pipelines "
        "written; the backlog created before the start and aged past settle_time",
        "outcome: both archived and failed as many files; for CSV the same rows in both "
        "tables; latency and fairness with the flat archive, watched by inotify",
    ]
    for c in s.comparisons.values():
        notes += [f"{c.name}: {p}" for p in c.problems]
        notes += [
            f"ERROR {c.name} {r.subject}: {r.error}" for r in [*c.script, *c.dropline] if r.error
        ]
    runs = f", {s.runs} runs each" if s.runs > 1 else ""
    return StageTable(f"stage workloads{runs}", rows, notes)


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _verdict(value: float | None, limit: float, *, at_most: bool, broken: bool) -> str:
    if value is None:
        return "ERROR" if broken else "SKIP"
    return "PASS" if (value <= limit if at_most else value >= limit) else "MISS"


def stage_goals(s: StageResults | None) -> list[GoalTuple]:
    """Issue 18's targets, each with this run's figure and its verdict."""
    out: list[GoalTuple] = []

    def add(
        text: str, value: float | None, limit: float, spec: str, *, at_most: bool, broken: bool
    ) -> None:
        verdict = _verdict(value, limit, at_most=at_most, broken=broken)
        out.append((text, DASH if value is None else format(value, spec), verdict))

    comps = s.comparisons if s is not None else {}

    def fps_goal(kind: str, limit: float) -> None:
        c = comps.get(kind)
        add(
            f"{TITLES[kind]}: files/s ≥ {limit:g} x the script's",
            ratio(c, _fps),
            limit,
            ".2f",
            at_most=False,
            broken=c is not None and c.broken,
        )

    fps_goal("csv", 1.0)
    csv = comps.get("csv")
    add(
        "CSV: CPU per file ≤ 1.5 x the script's",
        ratio(csv, _cpu),
        1.5,
        ".2f",
        at_most=True,
        broken=csv is not None and csv.broken,
    )
    fps_goal("command", 1.2)
    fps_goal("python", 0.3)
    lat = s.latency if s is not None else None
    rate = s.sizes.latency_rate if s is not None else 200.0
    for q, limit in ((0.5, 5.0), (0.99, 50.0)):
        add(
            f"one Python stage at {rate:g} files/s: latency p{round(q * 100)} ≤ {limit:g} ms",
            lat.latency(q) if lat is not None else None,
            limit,
            ".2f",
            at_most=True,
            broken=lat is not None and bool(lat.error),
        )
    f = s.fairness if s is not None else None
    waiting = f"{f.waiting:,}" if f is not None else "1,000"
    add(
        f"passthrough file while {waiting} wait in a slow pipeline: archived p99 ≤ 1,000 ms",
        f.latency(0.99) if f is not None else None,
        1000.0,
        ",.0f",
        at_most=True,
        broken=f is not None and bool(f.error),
    )
    differ = [c.name for c in comps.values() if c.problems]
    ran = [c for c in comps.values() if c.name != "cold"]
    out.append(
        (
            "nothing lost; as many archived and failed as the script; the same rows loaded",
            DASH if not ran else ("differs: " + ", ".join(differ) if differ else "same"),
            "SKIP"
            if not ran
            else ("ERROR" if any(c.broken for c in ran) else ("MISS" if differ else "PASS")),
        )
    )
    for name, limit in (("empty", 60.0), ("csv", 120.0)):
        case = next((m for m in (s.memory if s is not None else []) if m.name == name), None)
        mem = case.run.memory if case is not None and not case.run.error else None
        add(
            f"{name} pipeline: PSS summed over dropline and its children ≤ {limit:g} MiB",
            mem.peak_pss_kib / 1024 if mem is not None else None,
            limit,
            ".1f",
            at_most=True,
            broken=case is not None and bool(case.run.error),
        )
    cold = comps.get("cold")
    add(
        "empty pipeline from process start: files/s ≥ 0.5 x the bare loop's",
        ratio(cold, _fps),
        0.5,
        ".2f",
        at_most=False,
        broken=cold is not None and cold.broken,
    )
    return out
