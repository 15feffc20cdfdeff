"""Which pipelines may take files and start stages: those the operator did not pause.

``dropline pause P`` closes P's gate: its files are not claimed (they wait
in incoming/), its claimed files start no stage (they wait in working/,
no attempt spent), and the stages it is running end as they would.  Files
whose stages are all done still end.  ``dropline resume P`` opens it again.
The pauses are rows of the state (``state/pauses.py``), read at start, so
a restart keeps them; the daemon applies the commands' requests
(``serve``) and logs each change once.
"""

from __future__ import annotations

import time
from typing import Any

from ..state import PauseRows, RequestQueue

PAUSE, RESUME = "pause", "resume"  # the kinds of their requests
_AT_ONCE = 64


class Gates:
    """The pipelines closed now (``closed``, shared with the ready queues)."""

    def __init__(self, rows: PauseRows, log: Any) -> None:
        self.rows = rows
        self.log = log
        self.paused = rows.paused()  # pipeline -> (since, reason)
        self.closed: set[str] = set(self.paused)
        for pipeline, (since, reason) in sorted(self.paused.items()):
            log.info("pipeline.paused", pipeline=pipeline, since=since, reason=reason, at="start")

    def serve(self, requests: RequestQueue) -> None:
        """Apply `dropline pause` and `resume` requests: the change and its answer in
        one commit, then the log (once per change: asking again changes nothing)."""
        asked = [
            (r, kind, pipeline, detail)
            for kind in (PAUSE, RESUME)
            for r, kind, pipeline, detail in requests.open_requests(_AT_ONCE, kind=kind)
        ]
        if not asked:
            return
        asked.sort()  # in the order they were asked
        now = time.time()
        answers: list[tuple[int, str]] = []
        changed: list[tuple[str, str, str]] = []
        with requests.db.transaction():
            for request_id, kind, pipeline, detail in asked:
                answer = apply(self.rows, kind, pipeline, now, detail or "")
                answers.append((request_id, answer))
                if answer in ("paused", "resumed"):
                    changed.append((kind, pipeline, detail or ""))
            requests.finish_requests(answers, now)
        for kind, pipeline, reason in changed:
            if kind == PAUSE:
                self.paused[pipeline] = (now, reason)
                self.closed.add(pipeline)
                self.log.info("pipeline.paused", pipeline=pipeline, reason=reason)
            else:
                self.paused.pop(pipeline, None)
                self.closed.discard(pipeline)
                self.log.info("pipeline.resumed", pipeline=pipeline)

    def status(self) -> str:
        """For STATUS=: "paused: a, b; " (empty when none is)."""
        return f"paused: {', '.join(sorted(self.closed))}; " if self.closed else ""


def apply(rows: PauseRows, kind: str, pipeline: str, now: float, reason: str) -> str:
    """Pause or resume PIPELINE in the caller's transaction; the answer."""
    if kind == PAUSE:
        return "paused" if rows.pause(pipeline, now, reason) else "already paused"
    return "resumed" if rows.resume(pipeline) else "not paused"


__all__ = ["PAUSE", "RESUME", "Gates", "apply"]
