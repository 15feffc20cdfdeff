"""The stage workloads: dropline's stage engine against the script an operator writes.

- stages: CSV orders (validate-csv + transform + sqlite-load), one command
  stage (``/bin/true {path}``), one trivial Python stage; each against its
  script in ``refs/`` (one process, the work in-process, ``shutil.move``, one
  sqlite3 commit per file), the files waiting at start, files/s and CPU per
  file from process start to exit, several runs taking turns; and the
  outcome compared (as many archived and failed; for CSV the same rows);
- cold: the empty pipeline from process start against the bare rename loop,
  a backlog that has waited past settle_time;
- memory: PSS summed over dropline and all its children, peak, on the empty
  pipeline, the CSV pipeline (workers: 4, the default) and the Python stage;
- latency-py and fairness (``stage_timing``).

Nothing here asserts a figure.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..harness import Tree, make_tree
from .stage_runs import StageRun, compile_dropline, orders_rows, run
from .stage_setup import (
    COMMAND_PIPELINE,
    EMPTY_PIPELINE,
    PYTHON_PIPELINE,
    STAGE_WORKLOADS,
    StageSettings,
    configure,
    csv_pipeline,
    let_settle,
    write_orders,
    write_small,
)
from .stage_timing import FairnessResult, fairness, latency_python
from .workloads import Measurement, Settings

STAGE_KINDS = ("csv", "command", "python")
Progress = Callable[[str], None]


@dataclass
class Comparison:
    """A workload run by its script and by dropline, several times each."""

    name: str  # csv, command, python, cold
    files: int
    reference: str  # the script's key in stage_runs.SCRIPTS
    script: list[StageRun] = field(default_factory=list)
    dropline: list[StageRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # outcomes that differ

    def figures(self, subject: str, get: Callable[[StageRun], float | None]) -> list[float]:
        runs = self.dropline if subject == "dropline" else self.script
        return [v for v in (get(r) for r in runs) if v is not None]

    def median(self, subject: str, get: Callable[[StageRun], float | None]) -> float | None:
        values = self.figures(subject, get)
        return statistics.median(values) if values else None

    @property
    def broken(self) -> bool:
        return any(not r.ok for r in [*self.script, *self.dropline])


@dataclass
class MemoryCase:
    """dropline on one pipeline, its process tree's memory sampled."""

    name: str
    workers: int
    run: StageRun


@dataclass
class StageResults:
    """Everything the stage workloads measured."""

    sizes: StageSettings
    runs: int
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    latency: Measurement | None = None
    fairness: FairnessResult | None = None
    memory: list[MemoryCase] = field(default_factory=list)


def _prepare(kind: str, tree: Tree, sizes: StageSettings) -> tuple[int, Path | None]:
    """The files of workload KIND in TREE's incoming/, and dropline's configuration."""
    database = None
    if kind == "csv":
        files = sizes.csv_files
        write_orders(tree.incoming, files, sizes.csv_rows, sizes.csv_bad_every)
        database = tree.root / "orders.db"
        configure(tree, csv_pipeline(database))
    else:
        files = {
            "command": sizes.command_files,
            "python": sizes.python_files,
            "cold": sizes.cold_files,
        }[kind]
        write_small(tree.incoming, [f"f{n:07d}.dat" for n in range(files)])
        pipeline = {"command": COMMAND_PIPELINE, "python": PYTHON_PIPELINE}
        configure(tree, pipeline.get(kind, EMPTY_PIPELINE))
    return files, database


def _timeout(files: int) -> float:
    return 120.0 + files / 20.0  # slower than 20 files/s is stuck


def compare(
    kind: str, root: Path, sizes: StageSettings, runs: int, keep: bool, say: Progress
) -> Comparison:
    """RUNS runs of the script and of dropline on workload KIND, taking turns."""
    reference = "bare" if kind == "cold" else kind
    result: Comparison | None = None
    loaded: dict[str, list[tuple[object, ...]]] = {}
    # Every run's files are written first and settle together: one wait for
    # settle_time per workload, not one per run.
    turns: list[tuple[int, str, Tree, int, Path | None]] = []
    for attempt in range(runs):
        order = ("script", "dropline") if attempt % 2 == 0 else ("dropline", "script")
        for who in order:
            tree = make_tree(root / f"{kind}-{who}-{attempt}")
            turns.append((attempt, who, tree, *_prepare(kind, tree, sizes)))
    for _, _, tree, _, _ in turns:
        let_settle(tree.incoming)
    for attempt, who, tree, files, database in turns:
        if result is None:
            result = Comparison(kind, files, reference)
        subject = "dropline" if who == "dropline" else reference
        m = run(subject, tree, files, timeout=_timeout(files), database=database)
        (result.dropline if who == "dropline" else result.script).append(m)
        say(f"{kind}, {subject}, run {attempt + 1}: {_summary(m)}")
        if database is not None and m.ok:
            rows = orders_rows(database)
            previous = loaded.setdefault(who, rows)
            if rows != previous:
                result.problems.append(f"{subject}: run {attempt + 1} loaded other rows")
        if not keep:
            shutil.rmtree(tree.root, ignore_errors=True)
    assert result is not None
    _check_outcomes(result, loaded)
    return result


def _check_outcomes(c: Comparison, loaded: dict[str, list[tuple[object, ...]]]) -> None:
    """Both subjects archived and failed as many files; for CSV, loaded the same rows."""
    ends = {(r.subject, r.archived, r.failed) for r in [*c.script, *c.dropline] if r.ok}
    if len({(a, f) for _, a, f in ends}) > 1:
        c.problems.append(
            "archived/failed differ: "
            + ", ".join(f"{s} {a}/{f}" for s, a, f in sorted(ends, key=str))
        )
    if c.name == "csv" and "script" in loaded and "dropline" in loaded:
        mine, theirs = loaded["dropline"], loaded["script"]
        if mine != theirs:
            c.problems.append(
                f"tables differ: dropline loaded {len(mine):,} rows, the script {len(theirs):,}"
            )
        elif not mine:
            c.problems.append("no rows loaded")


def memory(root: Path, sizes: StageSettings, keep: bool, say: Progress) -> list[MemoryCase]:
    """dropline's process tree sampled on the empty, CSV and Python pipelines."""
    cases = []
    for kind, name in (("cold", "empty"), ("csv", "csv"), ("python", "python")):
        tree = make_tree(root / f"memory-{name}")
        if kind == "cold":
            write_small(tree.incoming, [f"f{n:07d}.dat" for n in range(sizes.memory_files)])
            configure(tree, EMPTY_PIPELINE)
            let_settle(tree.incoming)
            files = sizes.memory_files
        else:
            files, _ = _prepare(kind, tree, sizes)
            let_settle(tree.incoming)
        m = run("dropline", tree, files, timeout=_timeout(files), sample_memory=True)
        cases.append(MemoryCase(name, 4, m))
        peak = m.memory.peak_pss_kib / 1024 if m.memory else 0.0
        say(
            f"memory, {name} pipeline: peak PSS {peak:.1f} MiB"
            + (f" ERROR {m.error}" * bool(m.error))
        )
        if not keep:
            shutil.rmtree(tree.root, ignore_errors=True)
    return cases


def _summary(m: StageRun) -> str:
    if m.error:
        return f"ERROR {m.error}"
    return (
        f"{m.files_per_s or 0:,.0f} files/s from start, {m.cpu_ms_per_file or 0:.3f} ms CPU/file, "
        f"{m.archived} archived, {m.failed} failed"
    )


def run_stage_workloads(
    settings: Settings, sizes: StageSettings, workdir: Path, method: str, say: Progress
) -> StageResults | None:
    """The stage workloads SETTINGS asks for (None if none)."""
    wanted = [w for w in STAGE_WORKLOADS if settings.wants(w)]
    if not wanted:
        return None
    compile_dropline()  # timed from process start: as installed, not compiled at each start
    runs = settings.backlog_runs
    results = StageResults(sizes, runs)
    root = workdir / "stages"
    root.mkdir(parents=True, exist_ok=True)
    if "stages" in wanted:
        for kind in STAGE_KINDS:
            results.comparisons[kind] = compare(kind, root, sizes, runs, settings.keep, say)
    if "cold" in wanted:
        results.comparisons["cold"] = compare("cold", root, sizes, runs, settings.keep, say)
    if "latency-py" in wanted:
        m = latency_python(root / "latency-py", settings, method, sizes)
        results.latency = m
        say(
            f"latency through one Python stage: p50 {m.latency(0.5) or 0:.2f} ms, "
            f"p99 {m.latency(0.99) or 0:.2f} ms" + (f" ERROR {m.error}" * bool(m.error))
        )
    if "fairness" in wanted:
        f = results.fairness = fairness(root / "fairness", sizes)
        say(
            f"fairness: passthrough p50 {f.latency(0.5) or 0:.0f} ms, p99 "
            f"{f.latency(0.99) or 0:.0f} ms" + (f" ERROR {f.error}" * bool(f.error))
        )
    if "memory" in wanted:
        results.memory = memory(root, sizes, settings.keep, say)
    if not settings.keep:
        shutil.rmtree(root, ignore_errors=True)
    return results
