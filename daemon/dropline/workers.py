"""The worker threads that run stages, so a slow stage never stalls the main loop.

A job goes in; a StageResult comes out on the daemon's queue.  Workers never
touch the database or the spool.  A command runs in its own process group; a
Python stage (by default) and the CPU-bound builtins run in the worker's own
child process (``isolation.py``), killed at its timeout, fed ahead so the
child takes the next file without waiting for the daemon.  A stage run in a
thread (``isolation: thread``, the builtins publish, webhook and noop)
cannot be killed: when one hangs past its timeout the main loop abandons it
and the pool starts a replacement thread; the stuck thread leaves when its
stage finally returns.

The pool takes ``capacity`` jobs (a few times its threads): each worker has
the next one at hand when its current one ends (``room_for``).  A job waiting in the queue has
not begun (``StageJob.begun``): its timeout counts from when it does.
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
from .isolation import AHEAD, StageProcess
from .pipeline import Stage
from .stages import StageContext, call_stage


@dataclass(frozen=True)
class StageJob:
    """One attempt of one stage on one file."""

    item_id: str
    token: int  # tells this attempt's result from a stale one
    stage: Stage
    ctx: StageContext
    begun: threading.Event = field(default_factory=threading.Event)  # set when it starts


@dataclass(frozen=True)
class StageResult:
    """How an attempt ended: succeeded, failed (retryable), permanent or timeout."""

    item_id: str
    token: int
    outcome: str
    error: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    duration: float = 0.0


def isolated_spec(job: StageJob) -> dict[str, Any]:
    """What the worker's child needs to build the stage and run this attempt."""
    ctx, stage = job.ctx, job.stage
    cfg = stage.config
    return {
        "kind": cfg.kind,
        "ref": cfg.python,
        "builtin": cfg.builtin,
        "options": dict(cfg.options),
        "search": list(stage.search),
        "file": stage.source[0],
        "key": stage.source[1],
        "line": cfg.line,
        "lines": dict(cfg.option_lines),
        # A builtin is the daemon's own code: no address-space limit of the operator's.
        "memory_limit": cfg.memory_limit if cfg.kind == "python" else None,
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


def run_stage(job: StageJob) -> StageResult:
    """Run one stage attempt (in this thread) and classify how it ended."""
    started = time.monotonic()
    outcome, error, metadata = call_stage(job.stage.func, job.ctx)
    crashpoint("stage.finished")
    return StageResult(job.item_id, job.token, outcome, error, metadata, time.monotonic() - started)


_NOTHING = object()  # the queue had nothing at hand

# Commands a worker thread has handed to it: the one it runs and three at hand,
# so that it goes from one to the next while the loop commits (a pass of the
# loop took about five times a short command), and the loop's commits and
# moves are shared by more files.  A file of another pipeline waits for at
# most these three more commands than its turn would have it.
COMMANDS_AHEAD = 4


class WorkerPool:
    """A fixed number of daemon threads taking jobs from one queue."""

    def __init__(self, size: int, out: queue.SimpleQueue[Any], log_format: str = "auto") -> None:
        self.size = size
        self.capacity = size * max(AHEAD, COMMANDS_AHEAD)  # jobs at once, running or at hand
        self._out = out
        self._log_format = log_format
        self._jobs: queue.SimpleQueue[StageJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._excess = 0  # threads that should leave after their current job
        self._idle = 0  # threads waiting for a job: the next one is theirs, not taken ahead
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._work, name="dropline-worker", daemon=True).start()

    def _work(self) -> None:
        process = StageProcess(self._log_format)  # started at its first job for a process
        held: StageJob | None = None  # a job for this thread, once the child's have ended
        stop = False
        try:
            while True:
                busy = process.busy()
                if held is None and not stop and (not busy or (process.room() and not self._idle)):
                    job = self._take(block=not busy)
                    if job is None:
                        stop = True
                    elif isinstance(job, StageJob):
                        if job.stage.runs_in != "process":
                            held = job
                        elif job.ctx.cancel is not None and job.ctx.cancel.is_set():
                            self._deliver(job, "failed", "cancelled: dropline is stopping", {}, 0)
                        else:
                            job.begun.set()
                            process.send(
                                (job, time.monotonic()),
                                isolated_spec(job),
                                job.ctx.timeout,
                                job.ctx.cancel,
                            )
                        continue
                if process.busy():
                    for (job, sent), outcome, error, metadata in process.wait():
                        self._deliver(job, outcome, error, metadata, time.monotonic() - sent)
                elif held is not None:
                    held.begun.set()
                    self._out.put(run_stage(held))
                    held = None
                    with self._lock:
                        if self._excess > 0:
                            self._excess -= 1
                            return
                elif stop:
                    return
        finally:
            process.close()

    def _take(self, block: bool) -> object:
        if not block:
            try:
                return self._jobs.get_nowait()
            except queue.Empty:
                return _NOTHING
        with self._lock:
            self._idle += 1
        try:
            return self._jobs.get()
        finally:
            with self._lock:
                self._idle -= 1

    def _deliver(
        self, job: StageJob, outcome: str, error: str, metadata: dict[str, Any], took: float
    ) -> None:
        crashpoint("stage.finished")
        self._out.put(StageResult(job.item_id, job.token, outcome, error, metadata, took))

    def room_for(self, runs_in: str) -> int:
        """How many attempts may be in the pool (running or at hand) when one
        more of a stage that runs so is handed out: a thread stage waits for a
        free worker."""
        if runs_in == "command":
            return self.size * COMMANDS_AHEAD
        if runs_in == "process":
            return self.size * AHEAD
        return self.size

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
