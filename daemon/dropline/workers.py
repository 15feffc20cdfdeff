"""The worker threads that run stages, so a slow stage never stalls the main loop.

A job goes in; a StageResult comes out on the daemon's queue.  Workers never
touch the database or the spool.  A command runs in its own process group; a
Python stage runs by default in the worker's own child process
(``isolation.py``), killed at its timeout.  A stage run in a thread
(``isolation: thread``, and the builtins) cannot be killed: when one hangs
past its timeout the main loop abandons it and the pool starts a replacement
thread; the stuck thread leaves when its stage finally returns.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .crashpoints import crashpoint
from .isolation import StageProcess
from .pipeline import Stage
from .stages import StageContext, call_stage


@dataclass(frozen=True)
class StageJob:
    """One attempt of one stage on one file."""

    item_id: str
    token: int  # tells this attempt's result from a stale one
    stage: Stage
    ctx: StageContext


@dataclass(frozen=True)
class StageResult:
    """How an attempt ended: succeeded, failed (retryable), permanent or timeout."""

    item_id: str
    token: int
    outcome: str
    error: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    duration: float = 0.0


def run_isolated(job: StageJob, process: StageProcess) -> StageResult:
    """Run one attempt of a Python stage in the worker's child process."""
    started = time.monotonic()
    ctx, cfg = job.ctx, job.stage.config
    spec = {
        "ref": cfg.python,
        "options": dict(cfg.options),
        "search": list(job.stage.search),
        "memory_limit": cfg.memory_limit,
        "item_id": ctx.item_id,
        "path": os.fspath(ctx.path),
        "name": ctx.name,
        "pipeline": ctx.pipeline,
        "stage": ctx.stage,
        "attempt": ctx.attempt,
        "metadata": dict(ctx.metadata),
        "timeout": ctx.timeout,
        "scratch": os.fspath(ctx.scratch) if ctx.scratch is not None else None,
    }
    outcome, error, metadata = process.run(spec, ctx.timeout, ctx.cancel)
    crashpoint("stage.finished")
    return StageResult(job.item_id, job.token, outcome, error, metadata, time.monotonic() - started)


def run_stage(job: StageJob) -> StageResult:
    """Run one stage attempt (in this thread) and classify how it ended."""
    started = time.monotonic()
    outcome, error, metadata = call_stage(job.stage.func, job.ctx)
    crashpoint("stage.finished")
    return StageResult(job.item_id, job.token, outcome, error, metadata, time.monotonic() - started)


class WorkerPool:
    """A fixed number of daemon threads taking jobs from one queue."""

    def __init__(self, size: int, out: queue.SimpleQueue[Any], log_format: str = "auto") -> None:
        self.size = size
        self._out = out
        self._log_format = log_format
        self._jobs: queue.SimpleQueue[StageJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._excess = 0  # threads that should leave after their current job
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._work, name="dropline-worker", daemon=True).start()

    def _work(self) -> None:
        process = StageProcess(self._log_format)  # started at its first Python stage
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                if job.stage.runs_in == "process":
                    self._out.put(run_isolated(job, process))
                else:
                    self._out.put(run_stage(job))
                with self._lock:
                    if self._excess > 0:
                        self._excess -= 1
                        return
        finally:
            process.close()

    def submit(self, job: StageJob) -> None:
        self._jobs.put(job)

    def abandon_one(self) -> None:
        """A thread is stuck in a stage past its timeout: replace it."""
        with self._lock:
            self._excess += 1
        self._spawn()

    def close(self) -> None:
        for _ in range(self.size):
            self._jobs.put(None)
