"""What the stage workloads run on: their sizes, their files, dropline's configurations.

dropline runs with its shipped defaults (workers, isolation, settle_time,
archive layout...): only the paths, the JSON log to a file and the pipelines
are written.  Its backlog is created, then left to wait past the default
``settle_time`` before the start, as a backlog waiting for ``systemctl
start`` has (``let_settle``).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..harness import Tree
from . import stage_funcs

DEFAULT_SETTLE_S = 2.0  # dropline's default settle_time
COLUMNS = ("order_id", "customer", "amount", "date", "qty")
# Each can be run alone (BENCH_ONLY), as the other workloads.
STAGE_WORKLOADS = ("stages", "latency-py", "fairness", "memory", "cold")


@dataclass(frozen=True)
class StageSettings:
    """The sizes of the stage workloads (``quick()``: the BENCH_QUICK form)."""

    csv_files: int = 400
    csv_rows: int = 300  # rows per CSV file (a few duplicated)
    csv_bad_every: int = 40  # one file in this many has a bad value
    command_files: int = 1_000
    python_files: int = 2_000
    latency_rate: float = 200.0  # files/s through one Python stage
    latency_seconds: float = 10.0
    fairness_waiting: int = 1_000  # files waiting in the slow pipeline
    fairness_files: int = 50  # passthrough files dropped meanwhile
    fairness_every: float = 0.1  # seconds between them
    slow_ms: float = 50.0  # the slow stage's time per file
    memory_files: int = 2_000  # the empty pipeline's backlog in the memory workload
    cold_files: int = 20_000  # the empty pipeline from process start

    @classmethod
    def quick(cls) -> StageSettings:
        return cls(
            csv_files=120,
            command_files=300,
            python_files=600,
            latency_seconds=4.0,
            fairness_files=30,
            memory_files=1_000,
            cold_files=5_000,
        )


# --- files --------------------------------------------------------------------------


def write_orders(directory: Path, files: int, rows: int, bad_every: int, seed: int = 18) -> int:
    """FILES CSV files of orders in DIRECTORY; every BAD_EVERY-th has a bad amount.

    About one row in twenty repeats an earlier one (the same order_id): the
    dedupe drops it.  The same SEED gives the same files.  Returns how many
    are bad.
    """
    rng = random.Random(seed)
    bad = 0
    customers = [f"customer-{i:03d}" for i in range(50)]
    for n in range(files):
        lines = [",".join(COLUMNS)]
        written: list[str] = []
        for r in range(rows):
            if written and rng.random() < 0.05:
                lines.append(rng.choice(written))
                continue
            row = (
                f"{n * 100_000 + r},{rng.choice(customers)},{rng.randint(1, 99_999) / 100:.2f},"
                f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},{rng.randint(1, 20)}"
            )
            written.append(row)
            lines.append(row)
        if bad_every and n % bad_every == bad_every - 1:
            lines[len(lines) // 2] = f"{n * 100_000 + rows},x,abc,2026-01-01,1"
            bad += 1
        (directory / f"orders-{n:06d}.csv").write_text("\n".join(lines) + "\n")
    return bad


def write_small(directory: Path, names: list[str], size: int = 1024) -> None:
    """Small files of SIZE bytes, each starting with its name."""
    for name in names:
        head = name.encode() + b"\n"
        (directory / name).write_bytes(head + b"." * max(0, size - len(head)))


def let_settle(directory: Path, settle_s: float = DEFAULT_SETTLE_S) -> None:
    """Wait until every file in DIRECTORY is older than SETTLE_S (mtime and ctime).

    A backlog found at start is claimed once settled; one that has waited
    (the files came before the service started) is settled at once.  ctime
    cannot be set back, so the wait is real (a few seconds once per run).
    """
    newest = 0.0
    with os.scandir(directory) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            newest = max(newest, st.st_mtime, st.st_ctime)
    delay = newest + settle_s + 0.3 - time.time()
    if delay > 0:
        time.sleep(delay)


def archived(tree: Tree) -> int:
    """Files in archive/, flat or in date folders."""
    return sum(1 for p in tree.archive.rglob("*") if p.is_file())


def failed(tree: Tree) -> int:
    """Files in failed/ (not their .error.json)."""
    return sum(1 for p in tree.failed.iterdir() if not p.name.endswith(".error.json"))


# --- dropline's configurations ---------------------------------------------------------


def csv_pipeline(database: Path) -> str:
    """validate-csv (5 typed columns) + transform (dedupe) + sqlite-load."""
    return f"""
- name: orders
  match: "*.csv"
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns:
          - {{name: order_id, type: integer, empty: false}}
          - {{name: customer, empty: false}}
          - {{name: amount, type: decimal, empty: false}}
          - {{name: date, type: date, empty: false}}
          - {{name: qty, type: integer, empty: false}}
    - name: clean
      builtin: transform
      with: {{dedupe: [order_id]}}
    - name: load
      builtin: sqlite-load
      with: {{database: {database}, table: orders}}
"""


COMMAND_PIPELINE = """
- name: command
  match: "*"
  stages:
    - name: run-true
      command: ["/bin/true", "{path}"]
"""

PYTHON_PIPELINE = """
- name: trivial
  match: "*"
  stages:
    - name: trivial
      python: "stage_funcs:trivial"
"""

EMPTY_PIPELINE = """
- name: all
  match: "*"
  stages: []
"""

FAIRNESS_PIPELINES = """
- name: slow
  match: "*.slow"
  stages:
    - name: slow
      python: "stage_funcs:slow"
- name: passthrough
  match: "*.fast"
  stages: []
"""


def configure(tree: Tree, pipelines: str, **settings: object) -> None:
    """dropline.yaml for TREE: the shipped defaults but the paths and the JSON log.

    ``Tree.write_config`` sets its own test defaults; the product's are
    written over them here.  ``pipelines_dir`` holds the benchmark's stages.
    """
    stages_dir = tree.root / "pipelines"
    stages_dir.mkdir(exist_ok=True)
    shutil.copyfile(Path(stage_funcs.__file__), stages_dir / "stage_funcs.py")
    settings.setdefault("settle_time", "2s")
    settings.setdefault("archive_layout", "daily")
    settings["log_format"] = "json"  # what "auto" gives with the log in a file
    settings["pipelines_dir"] = str(stages_dir)
    tree.write_config(pipelines, **settings)
