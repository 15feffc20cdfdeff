"""CPU per file of the CSV builtins, timed by calling the stage functions directly.

The orders pipeline of the stage benchmark (validate-csv with 5 typed
columns, transform with a rename and a dedupe, sqlite-load) on files of a
few hundred rows, one process, no daemon around it: what each builtin costs
by itself.  ``python -m tests.bench.builtin_cpu [FILES] [ROWS] [--profile STAGE]``
prints the mean CPU per file of each stage over FILES files, user and
system time apart (the system time is mostly the file system's: mkdir,
open, fsync, SQLite's journal), and with ``--profile`` cProfile's top
entries for that stage.
"""

from __future__ import annotations

import cProfile
import pstats
import random
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from dropline.stages import StageContext, StageFunc
from dropline.stages.builtin import BuildEnv, build_builtin

COLUMNS: list[dict[str, Any]] = [
    {"name": "order_id", "type": "integer", "empty": False},
    {"name": "customer", "empty": False},
    {"name": "amount", "type": "decimal", "empty": False},
    {"name": "currency", "type": "enum", "values": ["EUR", "USD", "GBP"]},
    {"name": "ordered_on", "type": "date"},
]
NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", " Edsger Dijkstra ", "Hamming, Richard"]


def orders(seed: int, rows: int) -> str:
    """A file of ROWS orders, about one in twenty a duplicate of an earlier one."""
    rng = random.Random(seed)
    lines = ["order_id,customer,amount,currency,ordered_on"]
    for n in range(rows):
        order = seed * 100_000 + (rng.randrange(n) if n and rng.random() < 0.05 else n)
        name = rng.choice(NAMES)
        name = f'"{name}"' if "," in name else name
        amount = f"{rng.randrange(1, 100_000) / 100:.2f}"
        lines.append(f"{order},{name},{amount},{rng.choice(['EUR', 'USD', 'GBP'])},2026-11-02")
    return "\n".join(lines) + "\n"


def _stage(name: str, options: Mapping[str, Any]) -> StageFunc:
    env = BuildEnv(Path("/"), "orders")
    return build_builtin(name, options, file="bench.yaml", line=1, key="stage", env=env).func


def measure(files: int, rows: int, profile: str = "") -> dict[str, tuple[float, float]]:
    """Mean (user, system) CPU ms per file of each stage, metadata passed on as the daemon does."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stages = {
            "validate-csv": _stage("validate-csv", {"columns": COLUMNS}),
            "transform": _stage(
                "transform", {"rename": {"ordered_on": "order_date"}, "dedupe": ["order_id"]}
            ),
            "sqlite-load": _stage(
                "sqlite-load", {"database": str(root / "orders.db"), "table": "orders"}
            ),
        }
        spent: dict[str, list[float]] = {name: [0.0, 0.0] for name in stages}
        profiler = cProfile.Profile(time.process_time)
        log = structlog.get_logger()
        for n in range(files):
            path = root / f"orders-{n}.csv"
            path.write_text(orders(n + 1, rows), encoding="utf-8")
            metadata: dict[str, Any] = {}
            for name, func in stages.items():
                ctx = StageContext(
                    item_id=f"item{n:06d}",
                    path=path,
                    name=path.name,
                    pipeline="orders",
                    stage=name,
                    attempt=1,
                    metadata=dict(metadata),
                    log=log,
                    timeout=30.0,
                    scratch=root / "scratch" / f"item{n:06d}",
                )
                if name == profile:
                    profiler.enable()
                before = resource.getrusage(resource.RUSAGE_SELF)
                metadata.update(func(ctx) or {})
                after = resource.getrusage(resource.RUSAGE_SELF)
                spent[name][0] += after.ru_utime - before.ru_utime
                spent[name][1] += after.ru_stime - before.ru_stime
                if name == profile:
                    profiler.disable()
        if profile:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return {
        name: (user * 1000 / files, system * 1000 / files) for name, (user, system) in spent.items()
    }


def main(argv: list[str]) -> None:
    profile = ""
    if "--profile" in argv:
        at = argv.index("--profile")
        profile = argv[at + 1]
        del argv[at : at + 2]
    files = int(argv[0]) if argv else 300
    rows = int(argv[1]) if len(argv) > 1 else 300
    figures = measure(files, rows, profile)
    user = sum(u for u, _ in figures.values())
    total = sum(u + s for u, s in figures.values())
    shown = ", ".join(f"{name} {u:.2f}+{s:.2f}" for name, (u, s) in figures.items())
    print(
        f"{files} files of {rows} rows, CPU ms per file (user+system): {shown}; "
        f"sum {user:.2f} user, {total:.2f} in all"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
