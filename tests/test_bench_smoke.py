"""A small run of the benchmark (tests/bench), end to end, so that it cannot rot.

The same code as ``make bench`` on a few hundred files: every subject, every
workload, the table and its markdown.  Only structure is checked (every
column and row is there, every file arrived where it should): the figures
themselves are not, because these machines are shared and noisy.
"""

from __future__ import annotations

from pathlib import Path

from .bench.report import build
from .bench.stage_setup import StageSettings
from .bench.subjects import DROPLINE, INOTIFYWAIT, KINDS, REFERENCES
from .bench.workloads import Settings, run_benchmark

SMOKE = Settings(
    backlog=300,
    backlog_runs=1,  # the structure, not the figures: one run of each is enough
    big=600,
    rate=100.0,
    live_seconds=0.5,
    notify_stall=0.2,
    sigterm_after=0.05,
    cpu_files=12,
    burn_ms=2.0,
    inotify_grace=0.3,
    stages=StageSettings(
        csv_files=12,
        csv_rows=40,
        csv_bad_every=4,
        command_files=20,
        python_files=30,
        latency_rate=50.0,
        latency_seconds=0.5,
        fairness_waiting=60,
        fairness_files=5,
        fairness_every=0.05,
        slow_ms=20.0,
        memory_files=50,
        cold_files=100,
    ),
)


def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """Every workload on every subject; a table with every column; no file lost."""
    progress: list[str] = []
    results = run_benchmark(SMOKE, tmp_path / "work", progress.append)
    report = build(results)
    text, markdown = report.text(), report.markdown()
    print(text)

    titles = [k.title for k in KINDS]
    assert report.columns == titles + [f"÷ {k.title}" for k in REFERENCES]
    header = markdown.splitlines()[2]
    for column in report.columns:
        assert column in header
    assert all(len(row.cells) == len(report.columns) for row in report.rows)
    labels = [row.label for row in report.rows]
    for label in ("files/s, READY → all archived", "latency p99, ms", "peak RSS, MiB"):
        assert label in labels
    assert any(label.startswith("SIGTERM while draining") for label in labels)
    assert any("2 workers" in label for label in labels)
    assert text.startswith("machine: ")
    assert len(report.goals) == 11 + 11  # the empty pipeline's, then the stage engine's
    assert any("notify reader stalled" in label for label in labels)
    assert {g.verdict for g in report.goals} <= {"PASS", "MISS", "SKIP"}, report.goals

    available = [k for k in KINDS if k.key not in results.unavailable]
    if INOTIFYWAIT not in available:
        assert results.unavailable[INOTIFYWAIT.key] in text
    for workload in (results.backlog, results.live, results.big):
        assert set(workload) == {k.key for k in available}, workload.keys()

    for kind in available:
        for name, m in (("backlog", results.backlog), ("live", results.live)):
            run = m[kind.key]
            assert not run.error, (name, kind.key, run.error)
        live = results.live[kind.key]
        assert live.arrived == SMOKE.live_files, kind.key
        assert len(live.latencies_ms) == SMOKE.live_files, kind.key
        backlog, big = results.backlog[kind.key], results.big[kind.key]
        if kind is INOTIFYWAIT:
            # It moves only what it is told of by inotify: nothing present at start.
            assert backlog.note and big.note
            continue
        assert backlog.arrived == SMOKE.backlog, kind.key
        assert big.arrived == SMOKE.big and not big.error, (kind.key, big.error)
        assert backlog.cpu_s is not None and backlog.maxrss_kib, kind.key
        assert backlog.ready_s is not None, kind.key

    stalled = results.live_stalled
    assert stalled is not None and not stalled.error, stalled
    assert stalled.notify_stalled_s is not None and stalled.notify_stalled_s >= 0.2
    assert len(stalled.latencies_ms) == SMOKE.live_files
    assert 0 < len(stalled.stalled_ms) < SMOKE.live_files

    sigterm = results.sigterm
    assert sigterm is not None
    assert sigterm.lossless, sigterm.problems
    assert sigterm.archived_after == SMOKE.backlog
    cpu = results.cpu_stage
    assert cpu is not None
    for run in (cpu.one, cpu.two):
        assert not run.error and run.arrived == SMOKE.cpu_files, run.error
    assert results.live[DROPLINE.key].exit_code == 0
    assert any("latency by" in line for line in progress)

    stages = results.stages
    assert stages is not None and report.stages is not None
    assert set(stages.comparisons) == {"csv", "command", "python", "cold"}
    for comparison in stages.comparisons.values():
        runs = [*comparison.script, *comparison.dropline]
        assert len(runs) == 2 * SMOKE.backlog_runs, comparison.name
        assert all(r.ok and r.seconds and r.cpu_s for r in runs), [r.error for r in runs]
        assert not comparison.problems, (comparison.name, comparison.problems)
    csv = stages.comparisons["csv"]
    assert {r.failed for r in [*csv.script, *csv.dropline]} == {3}  # one bad file in 4
    assert stages.latency is not None and not stages.latency.error, stages.latency
    assert len(stages.latency.latencies_ms) == stages.latency.files
    assert stages.fairness is not None and not stages.fairness.error, stages.fairness
    assert len(stages.fairness.latencies_ms) == 5
    assert [m.name for m in stages.memory] == ["empty", "csv", "python"]
    python = stages.memory[2].run.memory
    assert python is not None and python.peak_pss_kib > 0
    assert any(p.name == "dropline.isolation_child" for p in python.children())
    assert "stage workloads" in text and "÷ script" in markdown
