"""How many attempts of a stage the loop hands to the workers at once.

Each pass of the loop costs about the same whatever it carries (its
commits, its wake-ups), so the more files one pass hands out and records,
the less each file costs; but a file handed out waits in the pool behind
the others, and so does the next pipeline's file.  So: a stage in a worker
thread or one declared ``idempotent: false`` gets no more than one attempt
per worker (``Scheduler.dispatch`` says why); an idempotent command
``COMMANDS_AHEAD`` per worker (``workers.py`` says why); an idempotent
stage in the workers' child processes gets ``AHEAD`` per worker at first,
and more once its attempts are measured quick: as many as a worker's child
runs in ``HORIZON`` seconds, up to ``MOST_AHEAD``.  A trivial Python stage
(tens of microseconds) so has 64 files in flight per worker, and a file of
another pipeline waits behind at most about ``HORIZON`` of its work; a
stage of 50 ms keeps two.  The time is the one the child measured around
the stage itself, averaged over the last few attempts; a stage that turns
slow is paced down by its next results.
"""

from __future__ import annotations

from ..isolation import AHEAD, MOST_AHEAD
from ..pipeline import Stage
from ..workers import COMMANDS_AHEAD

HORIZON = 0.02  # seconds of a stage's work a worker may have queued ahead of a new file
_WEIGHT = 0.25  # of the newest measure in the average
_KEPT = 1024  # stages measured, past which those of earlier configurations are forgotten


class Pacing:
    """The measured time of the stages run ahead, and the attempts each may have out."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._seconds: dict[tuple[str, str], float] = {}  # by (pipeline, stage)

    def most(self) -> int:
        """The attempts handed out at once, all stages together, at most."""
        return self.workers * MOST_AHEAD

    def ran(self, pipeline: str, stage: str, seconds: float) -> None:
        """An attempt of STAGE ran in a worker's child for SECONDS."""
        if seconds <= 0.0:
            return  # never started (cancelled at a stop): nothing learnt
        key = (pipeline, stage)
        known = self._seconds.get(key)
        if known is None and len(self._seconds) >= _KEPT:
            self._seconds.clear()
        self._seconds[key] = seconds if known is None else known + _WEIGHT * (seconds - known)

    def ahead(self, pipeline: str, stage: Stage) -> int:
        """How many attempts of STAGE a worker may hold: the one it runs and those
        waiting for it (1 for a stage never handed out ahead)."""
        if not stage.config.idempotent:
            return 1
        if stage.runs_in == "command":
            return COMMANDS_AHEAD
        if stage.runs_in != "process":
            return 1
        seconds = self._seconds.get((pipeline, stage.name))
        if seconds is None:
            return AHEAD
        return max(AHEAD, min(MOST_AHEAD, int(HORIZON / max(seconds, 1e-6))))

    def limit(self, pipeline: str, stage: Stage) -> int:
        """The attempts handed out at once (all stages) under which one more of
        STAGE may be handed out."""
        return self.workers * self.ahead(pipeline, stage)
