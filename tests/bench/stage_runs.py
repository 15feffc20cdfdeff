"""Running one subject of a stage workload, timed from process start to its exit.

A stage workload starts from files already waiting in incoming/: the
reference script (``refs/``) or dropline (``--exit-when-idle``) is started,
and its time is counted from the moment it is spawned, not from READY, to
its exit once every file has ended in archive/ or failed/.  CPU comes from
wait4 at exit: the process and every child it reaped (dropline's mover,
its worker processes, the commands it ran).
"""

from __future__ import annotations

import compileall
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from ..harness import Tree
from .measure import NotifyReady, Subject, count_entries
from .stage_memory import TreeMemory, TreeSampler
from .stage_setup import archived, failed
from .subjects import REFS, dropline_env

SCRIPTS = {
    "csv": "csv_script.py",
    "command": "command_script.py",
    "python": "python_script.py",
    "bare": "bare_loop.py",
}
ORDERS_QUERY = "SELECT order_id, customer, amount, date, qty FROM orders ORDER BY 1, 2, 3, 4, 5"


@dataclass
class StageRun:
    """One subject, one run: from spawn to exit."""

    subject: str  # "dropline" or the script's key
    files: int
    seconds: float | None = None  # spawn to exit
    ready_s: float | None = None  # spawn to READY
    cpu_s: float | None = None  # wait4: its own and its reaped children's
    exit_code: int | None = None
    archived: int = 0
    failed: int = 0
    memory: TreeMemory | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def files_per_s(self) -> float | None:
        return self.files / self.seconds if self.ok and self.seconds else None

    @property
    def cpu_ms_per_file(self) -> float | None:
        """All CPU from spawn to exit (start-up included), per file."""
        if not self.ok or self.cpu_s is None or not self.files:
            return None
        return 1000.0 * self.cpu_s / self.files


def compile_dropline() -> None:
    """dropline's bytecode written beside its source, as installing it does.

    ``pip install`` (``make install``) compiles every module; an editable
    install run where PYTHONDONTWRITEBYTECODE is set would compile them from
    source at every start instead (about 0.2 s of each start on 2 cores),
    which no installed dropline pays.  compileall writes them whatever that says.
    """
    import dropline

    compileall.compile_dir(os.path.dirname(dropline.__file__), quiet=1)


def start(
    subject: str,
    tree: Tree,
    files: int,
    *,
    exit_when_idle: bool = True,
    env: dict[str, str] | None = None,
    database: Path | None = None,
) -> Subject:
    """Spawn SUBJECT ("dropline" or a key of SCRIPTS) on TREE, for FILES files."""
    ready = NotifyReady(tree.root / "notify.sock")
    if subject == "dropline":
        argv = [sys.executable, "-m", "dropline", "run", "--config", str(tree.config)]
        if exit_when_idle:
            argv.append("--exit-when-idle")
        full = {**dropline_env(ready), **(env or {})}
        log = tree.root / "daemon.log"
    else:
        argv = [sys.executable, str(REFS / SCRIPTS[subject]), str(tree.data)]
        argv += ["--count", str(files)]
        if database is not None:
            argv += ["--database", str(database)]
        full = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full.update(ready.env)
        log = tree.root / "ref.log"
    return Subject(argv, env=full, cwd=tree.root, ready=ready, log_path=log)


def run(
    subject: str,
    tree: Tree,
    files: int,
    *,
    timeout: float,
    database: Path | None = None,
    sample_memory: bool = False,
    env: dict[str, str] | None = None,
) -> StageRun:
    """Run SUBJECT on the FILES waiting in TREE to its exit; count where they ended."""
    result = StageRun(subject, files)
    proc = start(subject, tree, files, database=database, env=env)
    sampler = TreeSampler(proc.pid) if sample_memory else None
    exited = proc.finish(timeout)
    if sampler is not None:
        result.memory = sampler.stop()
    if exited is None:
        result.error = "could not be reaped"
        return result
    result.exit_code = exited.code
    result.seconds = exited.at - proc.started
    result.cpu_s = exited.cpu
    if proc.ready.at is not None:
        result.ready_s = proc.ready.at - proc.started
    result.archived, result.failed = archived(tree), failed(tree)
    left = count_entries(tree.incoming) + count_entries(tree.working)
    if exited.code != 0:
        result.error = f"exit {exited.code}: {proc.log_tail(5)[-300:]}"
    elif left or result.archived + result.failed != files:
        result.error = (
            f"{result.archived} archived + {result.failed} failed of {files}, {left} left"
        )
    return result


def orders_rows(database: Path) -> list[tuple[object, ...]]:
    """The rows loaded into the orders table of DATABASE (none if it is missing)."""
    if not database.exists():
        return []
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return list(db.execute(ORDERS_QUERY))
    except sqlite3.Error:
        return []
    finally:
        db.close()
