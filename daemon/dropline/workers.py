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

The loop hands the pool one job per thread of a stage run in a thread,
``COMMANDS_AHEAD`` per thread of a command, and of a stage in the worker
processes two per thread, so that
each worker's child has the next one at hand when its current one ends,
or more of a stage it measured quick (``StageJob.ahead``,
``loop/pacing.py``).  A job waiting in
the queue has not begun (``StageJob.begun``): its timeout counts from when
it does.  Workers started with ``warm`` start their child processes at once,
so that no file waits for an interpreter's start.  A worker whose child runs
one attempt and has room for the next watches the queue while it waits for
the child (a pipe holds one byte per job queued), so a job submitted
meanwhile is in the child's pipe before the running attempt ends: the child
goes from one file to the next without waiting for this thread, which shares
the interpreter lock with the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .crashpoints import crashpoint
from .isolation import AHEAD, STOPPED, WITHHELD, StageProcess
from .jobqueues import JobQueues
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
    ahead: int = AHEAD  # attempts of this stage a worker's child may hold at once
    prefer: int | None = None  # the worker whose child ran the file's last stage


@dataclass(frozen=True)
class StageResult:
    """How an attempt ended: succeeded, failed (retryable), permanent or timeout."""

    item_id: str
    token: int
    outcome: str
    error: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    duration: float = 0.0  # how long the stage ran (in a child: as the child measured it)
    began: bool = True  # False: dropline was stopping before it began, it never ran
    worker: int | None = None  # the worker whose child ran it (a stage in a child)


_BUILDS: dict[int, tuple[Stage, tuple[str, dict[str, Any]]]] = {}  # by id(stage)
_BUILDS_KEPT = 256  # stages of earlier configurations are forgotten past this many
_BUILDS_LOCK = threading.Lock()


def isolated_stage(stage: Stage, pipeline: str) -> tuple[str, dict[str, Any]]:
    """The stage's key in a worker's child and what the child needs to build it;
    worked out once per stage.  The key is the stage's content: a reload that
    leaves a stage as it was keeps it built in the children."""
    with _BUILDS_LOCK:
        known = _BUILDS.get(id(stage))
        # The stage is kept with it: its id is its own.  (A stage is of one pipeline.)
        if known is not None and known[0] is stage and known[1][1]["pipeline"] == pipeline:
            return known[1]
        cfg = stage.config
        build = {
            "kind": cfg.kind,
            "ref": cfg.python,
            "builtin": cfg.builtin,
            "options": dict(cfg.options),
            "search": list(stage.search),
            "file": stage.source[0],
            "key": stage.source[1],
            "line": cfg.line,
            "lines": dict(cfg.option_lines),
            "pipeline": pipeline,
            "stage": cfg.name,
            # A builtin is the daemon's own code: no address-space limit of the operator's.
            "memory_limit": cfg.memory_limit if cfg.kind == "python" else None,
        }
        key = "\0".join(
            (cfg.kind, pipeline, cfg.name, cfg.python or cfg.builtin or "")
        ) + json.dumps(build["options"], sort_keys=True, default=str)
        if len(_BUILDS) >= _BUILDS_KEPT:
            _BUILDS.clear()
        _BUILDS[id(stage)] = (stage, (key, build))
        return key, build


def isolated_spec(job: StageJob) -> dict[str, Any]:
    """What the worker's child needs to run this attempt (of a stage it has built)."""
    ctx = job.ctx
    return {
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
WARM_TIMEOUT = 10.0  # seconds a warm start waits for a child at most

# Commands a worker thread has handed to it: the one it runs and three at hand,
# so that it goes from one to the next while the loop commits (a pass of the
# loop took about five times a short command), and the loop's commits and
# moves are shared by more files.  A file of another pipeline waits for at
# most these three more commands than its turn would have it.
COMMANDS_AHEAD = 4


def _not_begun(job: StageJob, why: str) -> StageResult:
    """JOB handed back as never begun: dropline stops (STOPPED), or its pipeline was
    paused (WITHHELD)."""
    return StageResult(job.item_id, job.token, "failed", why, began=False)


class WorkerPool:
    """A fixed number of daemon threads taking jobs from one queue."""

    def __init__(
        self,
        size: int,
        out: queue.SimpleQueue[Any],
        log_format: str = "auto",
        *,
        warm: bool = False,
    ) -> None:
        self.size = size
        self._out = out
        self._log_format = log_format
        self._warm = warm  # start each thread's child process at once
        self._warming = size  # threads whose child has not started yet
        self._warmed = threading.Event()  # set once every thread's has (or failed to)
        self._stopping = threading.Event()  # set at a stop: jobs not begun are not begun
        # Pipelines paused: their jobs not begun are handed back (replaced whole, never
        # changed in place: the threads read it without a lock).
        self._withheld: frozenset[str] = frozenset()
        self._queues: JobQueues[StageJob | None] = JobQueues(size)
        self._slots = iter(range(size))  # a worker's own queue; none for a replacement
        self._lock = threading.Lock()
        self._excess = 0  # threads that should leave after their current job
        self._idle = 0  # threads waiting for a job: the next one is theirs, not taken ahead
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._idle += 1  # from now: a job for it is not taken ahead by another
        slot = next(self._slots, None)
        threading.Thread(
            target=self._work, args=(slot,), name="dropline-worker", daemon=True
        ).start()

    def _work(self, slot: int | None) -> None:
        process = StageProcess(self._log_format)  # started at its first job for a process
        held: StageJob | None = None  # a job for this thread, once the child's have ended
        stop = False
        counted = True  # counted idle (by _spawn, _count_idle) until it takes a job
        if self._warm:
            with contextlib.suppress(OSError):  # then started at its first job, or that fails
                process.start(WARM_TIMEOUT)
            with self._lock:
                self._warming -= 1
                if self._warming <= 0:
                    self._warmed.set()
        try:
            while True:
                busy = process.busy()
                if held is None and not stop and (not busy or process.room()):
                    job = self._take(slot, block=not busy, counted=counted)
                    counted = False
                    if job is None:
                        stop = True
                    elif isinstance(job, StageJob):
                        if self._stopping.is_set() and job.stage.config.idempotent:
                            # Not begun when the stop came: it runs after the restart
                            # (the queue may hold many files of a quick stage).  One
                            # not idempotent runs now: held back, it would fail as
                            # indeterminate.
                            self._out.put(_not_begun(job, STOPPED))
                        elif job.ctx.pipeline in self._withheld:
                            self._out.put(_not_begun(job, WITHHELD))
                        elif job.stage.runs_in != "process":
                            held = job
                        elif job.ctx.cancel is not None and job.ctx.cancel.is_set():
                            self._deliver(job, "failed", STOPPED, {}, 0, None)
                        else:
                            job.begun.set()
                            process.send(
                                job,
                                isolated_stage(job.stage, job.ctx.pipeline),
                                isolated_spec(job),
                                job.ctx.timeout,
                                job.ctx.cancel,
                                job.ahead,
                            )
                        continue
                if process.busy():
                    # Woken by a job queued while the child has room: one of this
                    # worker's own, or one for any worker if no thread is idle to
                    # take it; it goes to the child ahead.
                    ahead = held is None and not stop and process.room()
                    wake = self._queues.fds(slot, shared=not self._idle) if ahead else None
                    ended = process.wait(wake)
                    if ended and not process.busy() and held is None and not stop:
                        counted = self._count_idle()  # before the loop hands out more
                    for job, outcome, error, metadata, took in ended:
                        self._deliver(job, outcome, error, metadata, took, slot)
                elif held is not None and held.ctx.pipeline in self._withheld:
                    self._out.put(_not_begun(held, WITHHELD))
                    held = None
                elif held is not None:
                    held.begun.set()
                    result = run_stage(held)
                    held = None
                    with self._lock:
                        leaving = self._excess > 0
                        self._excess -= leaving
                    if not leaving and not stop:
                        counted = self._count_idle()
                    self._out.put(result)
                    if leaving:
                        return
                elif stop:
                    return
        finally:
            process.close()

    def _count_idle(self) -> bool:
        """This thread has nothing left to run: counted idle from now, before its
        last result reaches the loop, so that a job the loop hands out for a free
        worker (a command, a stage not to be taken ahead) is not taken ahead by
        another thread while this one is on its way back to the queue."""
        with self._lock:
            self._idle += 1
        return True

    def _take(self, slot: int | None, block: bool, counted: bool = False) -> object:
        """The next job (or None: close), or _NOTHING if none is queued and not BLOCK.

        Not blocking (its child runs one and has room), a thread takes one of its
        own, or one for any worker if no thread is idle.  Blocking, it counts as
        idle (COUNTED: it already does) till it has one, and takes its own, then
        one for any worker, then one another worker's child would have run.
        """
        if not block:
            return self._claim(self._queues.fds(slot, shared=not self._idle))
        if not counted:
            with self._lock:
                self._idle += 1
        try:
            fds = self._queues.fds(slot, shared=True, others=True)
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            while True:
                job = self._claim(fds)
                if job is not _NOTHING:
                    return job
                poller.poll()
        finally:
            with self._lock:
                self._idle -= 1

    def _claim(self, fds: list[int]) -> object:
        """A job of the queues of FDS if this thread wins its byte, else _NOTHING."""
        won, job = self._queues.take(fds)
        return job if won else _NOTHING

    def _deliver(
        self,
        job: StageJob,
        outcome: str,
        error: str,
        metadata: dict[str, Any],
        took: float,
        slot: int | None,
    ) -> None:
        crashpoint("stage.finished")
        result = StageResult(job.item_id, job.token, outcome, error, metadata, took, worker=slot)
        self._out.put(result)

    def wait_warm(self, timeout: float) -> bool:
        """With ``warm``: wait up to TIMEOUT until every thread's child has started
        (or failed to), so that the first files find them ready; whether they have.
        Those still starting go on starting: a file handed to one waits for it."""
        return not self._warm or self._warmed.wait(timeout)

    def withhold(self, pipelines: frozenset[str]) -> None:
        """The jobs of PIPELINES (paused) that a worker has not begun are handed back
        as never begun: those still queued at once, those a worker took as it reaches
        them; those running, or in a child's pipe already, go on."""
        self._withheld = pipelines
        if not pipelines:
            return
        queued = self._queues.withdraw(lambda j: j is not None and j.ctx.pipeline in pipelines)
        for job in queued:
            assert job is not None
            self._out.put(_not_begun(job, WITHHELD))

    def stop_starting(self) -> None:
        """dropline is stopping: the jobs still waiting in the queue are handed
        back as never begun; those running (and those already in a child's
        pipe, a few milliseconds of a quick stage) go on."""
        self._stopping.set()

    def submit(self, job: StageJob) -> None:
        self._queues.put(job, job.prefer)

    def submit_all(self, jobs: list[StageJob]) -> None:
        """Hand JOBS to the pool at once (``JobQueues.put_all``)."""
        self._queues.put_all([(job, job.prefer) for job in jobs])

    def abandon_one(self) -> None:
        """A thread is stuck in a stage past its timeout: replace it."""
        with self._lock:
            self._excess += 1
        self._spawn()

    def close(self) -> None:
        for _ in range(self.size):
            self._queues.put(None)
