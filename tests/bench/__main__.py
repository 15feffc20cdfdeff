"""``python -m tests.bench``: run the benchmark, print the table, write it as markdown.

Sizes and places come from the command line or the environment (the
command line wins):

    BENCH_QUICK=1          --quick          skip the big backlog (a million files); the
                                            stage workloads on fewer files
    BENCH_SIZES=N[,BIG]    --backlog N --big BIG   (BIG 0 skips the big backlog)
    BENCH_RUNS=K           --runs K         drains of the backlog per subject, the median shown (3)
    BENCH_RATE=R           --rate R         live files per second (200)
    BENCH_LIVE_SECONDS=S   --live-seconds S (10)
    BENCH_NOTIFY_STALL=S   --notify-stall S the notify reader stalled in a live run (4; 0 skips)
    BENCH_DIR=DIR          --dir DIR        where the data trees go (a new directory in /tmp)
    BENCH_OUT=FILE         --out FILE       the markdown table (var/bench.md)
    BENCH_KEEP=1           --keep           keep the data trees
    BENCH_ONLY=W[,W]       --only W[,W]     only these workloads: backlog, live, stalled
                                            (live with the notify reader stalled), sigterm,
                                            cpu, big, and the stage workloads: stages (CSV,
                                            command, Python stage against their scripts),
                                            latency-py, fairness, memory, cold (the empty
                                            pipeline from process start); the table shows
                                            the others as skipped
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..harness import REPO
from .report import build
from .stage_setup import StageSettings
from .workloads import WORKLOADS, Settings, run_benchmark


def _env_sizes() -> tuple[int | None, int | None]:
    raw = os.environ.get("BENCH_SIZES", "").replace(" ", "")
    if not raw:
        return None, None
    parts = [int(p.replace("_", "")) for p in raw.split(",") if p]
    return (parts[0] if parts else None), (parts[1] if len(parts) > 1 else None)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


def parse(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path]:
    """Settings, the data directory (None: a new temporary one) and the markdown file."""
    env_backlog, env_big = _env_sizes()
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", default=_flag("BENCH_QUICK"))
    parser.add_argument("--backlog", type=int, default=env_backlog or defaults.backlog)
    parser.add_argument("--big", type=int, default=defaults.big if env_big is None else env_big)
    parser.add_argument(
        "--runs", type=int, default=int(os.environ.get("BENCH_RUNS") or defaults.backlog_runs)
    )
    parser.add_argument(
        "--rate", type=float, default=float(os.environ.get("BENCH_RATE") or defaults.rate)
    )
    parser.add_argument(
        "--live-seconds",
        type=float,
        default=float(os.environ.get("BENCH_LIVE_SECONDS") or defaults.live_seconds),
    )
    parser.add_argument(
        "--notify-stall",
        type=float,
        default=float(os.environ.get("BENCH_NOTIFY_STALL") or defaults.notify_stall),
    )
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIR") or None)
    parser.add_argument(
        "--out", default=os.environ.get("BENCH_OUT") or str(REPO / "var" / "bench.md")
    )
    parser.add_argument("--keep", action="store_true", default=_flag("BENCH_KEEP"))
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""))
    args = parser.parse_args(argv)
    only = frozenset(w for w in args.only.replace(" ", "").split(",") if w)
    if only - set(WORKLOADS):
        parser.error(f"--only: unknown {sorted(only - set(WORKLOADS))}; known: {WORKLOADS}")
    settings = Settings(
        backlog=args.backlog,
        backlog_runs=max(1, args.runs),
        big=args.big,
        skip_big=args.quick or args.big <= 0,
        rate=args.rate,
        live_seconds=args.live_seconds,
        notify_stall=max(0.0, args.notify_stall),
        keep=args.keep,
        only=only,
        stages=StageSettings.quick() if args.quick else StageSettings(),
    )
    return settings, (Path(args.dir) if args.dir else None), Path(args.out)


def main(argv: list[str] | None = None) -> int:
    """Run everything; print the table; write the markdown. Exit 0 unless the run broke."""
    settings, base, out = parse(argv)
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dropline-bench-", dir=base))
    try:
        results = run_benchmark(settings, workdir)
        report = build(results)
    finally:
        if not settings.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(report.text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown())
    print(f"\nmarkdown written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
