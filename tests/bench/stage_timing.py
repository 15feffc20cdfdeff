"""The two latency workloads of the stage engine: through one Python stage, and fairness.

- latency-py: the live workload (files written in place at a fixed rate,
  latency from the writer's close() to archive/) with one trivial Python
  stage in dropline's default isolation;
- fairness: files wait in a pipeline whose one stage takes 50 ms, while
  files for a second pipeline, with no stages, are dropped one every 0.1 s;
  the latency of those from close() to archive/.

Both use the flat archive (a single folder to watch), dropline's defaults
otherwise.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..harness import make_tree
from .measure import ArchiveWatch
from .stage_runs import start
from .stage_setup import (
    FAIRNESS_PIPELINES,
    PYTHON_PIPELINE,
    StageSettings,
    configure,
    let_settle,
    write_small,
)
from .subjects import DROPLINE
from .workloads import READY_TIMEOUT, Measurement, Settings, live


def latency_python(
    root: Path, settings: Settings, method: str, sizes: StageSettings
) -> Measurement:
    """The live workload through one trivial Python stage (dropline alone)."""
    tree = make_tree(root)
    paced = Settings(
        rate=sizes.latency_rate, live_seconds=sizes.latency_seconds, file_size=settings.file_size
    )
    return live(
        DROPLINE,
        tree,
        paced,
        method,
        configure=lambda t: configure(t, PYTHON_PIPELINE, archive_layout="flat"),
    )


@dataclass
class FairnessResult:
    """Passthrough files dropped while a slow pipeline's backlog waits."""

    waiting: int  # files waiting in the slow pipeline at start
    dropped: int  # passthrough files dropped
    latencies_ms: list[float] = field(default_factory=list)
    slow_done_at_end: int | None = None  # slow files archived when the last passthrough one was
    error: str = ""

    def latency(self, q: float) -> float | None:
        """The Q-quantile (0..1) of the latencies in ms, nearest rank."""
        if self.error or not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def fairness(root: Path, sizes: StageSettings) -> FairnessResult:
    """SIZES.fairness_waiting slow files waiting; passthrough files dropped one by one."""
    result = FairnessResult(sizes.fairness_waiting, sizes.fairness_files)
    tree = make_tree(root)
    write_small(tree.incoming, [f"s{n:06d}.slow" for n in range(sizes.fairness_waiting)])
    let_settle(tree.incoming)
    configure(tree, FAIRNESS_PIPELINES, archive_layout="flat")
    env = {"DROPLINE_BENCH_SLOW_MS": f"{sizes.slow_ms:g}"}
    watch = ArchiveWatch(tree.archive)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # the watcher stamps an arrival as soon as it can
    proc = start("dropline", tree, sizes.fairness_waiting, exit_when_idle=False, env=env)
    try:
        if not proc.ready.wait(READY_TIMEOUT):
            result.error = f"no READY: {proc.log_tail(5)[-300:]}"
            return result
        closed: dict[str, int] = {}
        began = time.monotonic()
        for n in range(sizes.fairness_files):
            delay = began + n * sizes.fairness_every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name = f"p{n:04d}.fast"
            fd = os.open(tree.incoming / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, name.encode() + b"\n")
            finally:
                os.close(fd)
            closed[name] = time.monotonic_ns()
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and proc.exited is None:
            if all(name in watch.arrived for name in closed):
                break
            time.sleep(0.02)
        result.slow_done_at_end = sum(1 for n in watch.arrived if n.endswith(".slow"))
        result.latencies_ms = [
            (watch.arrived[name] - at) / 1e6 for name, at in closed.items() if name in watch.arrived
        ]
        if len(result.latencies_ms) != len(closed):
            result.error = f"{len(result.latencies_ms)} of {len(closed)} passthrough files arrived"
        elif watch.overflowed:
            result.error = "inotify queue overflow on archive/"
        return result
    finally:
        proc.send(signal.SIGTERM)
        exited = proc.finish(30.0)
        if exited is not None and exited.code != 0 and not result.error:
            result.error = f"exit {exited.code}: {proc.log_tail(5)[-300:]}"
        watch.close()
        sys.setswitchinterval(switch)
