"""Which pipelines may start stages: not those the operator paused, nor those a
stage's breaker holds.

**Paused** (``dropline pause P``): P's files are not claimed (they wait in
incoming/), its claimed files start no stage (they wait in working/, no
attempt spent), and the stages it is running end as they would.  Files
whose stages are all done still end.  ``dropline resume P`` opens it again.

**Held** (a stage's breaker): when a stage fails retriably for
``hold_after`` different files in a row (its downstream is down, not the
files bad), or at once when it cannot work for any file (its program
cannot be started: ``UnavailableError``), the pipeline holds: its files
are claimed as usual but start no stage, so no attempt is spent on a
downstream that is down.  One file probes the stage at growing intervals
(``hold_probe``); a probe that fails is not counted against its file; the
first that succeeds releases the pipeline.

Both are rows of the state (``state/pauses.py``, ``state/holds.py``), read
at start: a restart keeps them.  Each change is logged once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import StageConfig
from ..pipeline import Routes
from ..state import HoldRow, HoldRows, PauseRows, RequestQueue
from ..workers import StageResult

PAUSE, RESUME = "pause", "resume"  # the kinds of their requests
_AT_ONCE = 64


@dataclass
class Hold:
    row: HoldRow
    probe_at: float  # monotonic: when a file may try the stage again
    probing: str | None = None  # the item probing now
    most: float = 0.0  # the stage's hold_probe.max: the probes have backed off all the way

    @property
    def backed_off(self) -> bool:
        """Probed and failed until the longest delay: down for a while, not a blip."""
        return self.probing is None and self.row.probe_delay >= self.most


@dataclass
class _Streak:
    """A stage's retriable failures in a row, by the files that had them."""

    files: set[str] = field(default_factory=set)
    last_error: str = ""


class Gates:
    """``closed``: the pipelines that start no stage now (shared with the ready
    queues); ``paused``: those the operator paused, which claim no file either."""

    def __init__(self, pauses: PauseRows, holds: HoldRows, log: Any, metrics: Any) -> None:
        self.pauses = pauses
        self.holds_rows = holds
        self.log = log
        self.metrics = metrics
        self.paused = pauses.paused()  # pipeline -> (since, reason)
        mono = time.monotonic()
        self.held = {p: Hold(row, mono + row.probe_delay) for p, row in holds.held().items()}
        self.closed: set[str] = set(self.paused) | set(self.held)
        # Told the paused pipelines whenever they change (the worker pool's withhold).
        self.on_paused: Callable[[frozenset[str]], None] = lambda paused: None
        self._streaks: dict[tuple[str, str], _Streak] = {}
        self._untold: list[tuple[str, str, dict[str, Any]]] = []  # told once committed
        for pipeline, (since, reason) in sorted(self.paused.items()):
            log.info("pipeline.paused", pipeline=pipeline, since=since, reason=reason, at="start")
        for pipeline, hold in sorted(self.held.items()):
            row = hold.row
            log.warning(
                "pipeline.held", pipeline=pipeline, stage=row.stage, reason=row.reason, at="start"
            )
            metrics.pipeline_held(pipeline, True)

    # --- the operator's pause --------------------------------------------------

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
                answer = apply(self.pauses, kind, pipeline, now, detail or "")
                answers.append((request_id, answer))
                if answer in ("paused", "resumed"):
                    changed.append((kind, pipeline, detail or ""))
            requests.finish_requests(answers, now)
        for kind, pipeline, reason in changed:
            if kind == PAUSE:
                self.paused[pipeline] = (now, reason)
                self.log.info("pipeline.paused", pipeline=pipeline, reason=reason)
            else:
                self.paused.pop(pipeline, None)
                self.log.info("pipeline.resumed", pipeline=pipeline)
            self._reclose(pipeline)
        if changed:
            self.on_paused(frozenset(self.paused))

    # --- the breaker ----------------------------------------------------------------

    def judge(
        self,
        pipeline: str,
        stage: str,
        config: StageConfig,
        item_id: str,
        result: StageResult,
        *,
        failing: bool,
        mono: float,
    ) -> bool:
        """Tell the breaker how an attempt of STAGE on ITEM_ID ended; True when it is
        not the file's failure (the hold's probe failed, the pipeline held already, or
        the stage cannot work for any file): the file then waits, not counted.
        FAILING: an on_failure stage of a failed file (never held)."""
        hold = self.held.get(pipeline)
        if failing:
            self.probe_lost(pipeline, item_id)  # an on_failure stage is never a probe
            return False
        outcome = result.outcome
        probe = hold is not None and hold.probing == item_id
        if probe and (hold is None or hold.row.stage != stage or outcome == "permanent"):
            self.probe_lost(pipeline, item_id)  # not a probe of the held stage after all
            probe = False
        if outcome == "succeeded":
            self._streaks.pop((pipeline, stage), None)
            if probe:
                self.probe_ended(pipeline, True, "", config, mono)
            return False
        if outcome not in ("failed", "timeout", "unavailable") or not result.began:
            return False
        if probe:
            self.probe_ended(pipeline, False, result.error, config, mono)
            return True
        if hold is not None and hold.row.stage == stage:
            return True  # handed out before the hold began: not counted either
        if outcome == "unavailable":
            return self.unavailable(pipeline, stage, config, result.error)
        self.failed(pipeline, stage, config, item_id, result.error)
        return False

    def failed(
        self, pipeline: str, stage: str, config: StageConfig, item_id: str, error: str
    ) -> None:
        """An attempt of STAGE on ITEM_ID failed retriably (counted against the file):
        the pipeline holds once HOLD_AFTER different files in a row did."""
        if config.hold_after <= 0 or pipeline in self.held:
            return
        streak = self._streaks.setdefault((pipeline, stage), _Streak())
        streak.files.add(item_id)
        streak.last_error = error
        if len(streak.files) >= config.hold_after:
            why = f"{len(streak.files)} files in a row failed at it: {error}"
            self._hold(pipeline, stage, config, why)

    def unavailable(self, pipeline: str, stage: str, config: StageConfig, error: str) -> bool:
        """STAGE cannot work for any file: the pipeline holds at once.  False where
        no breaker is set (hold_after: 0): the attempt is an ordinary failure then."""
        if config.hold_after <= 0:
            return False
        if pipeline not in self.held:
            self._hold(pipeline, stage, config, error)
        return True

    def _hold(self, pipeline: str, stage: str, config: StageConfig, reason: str) -> None:
        delay = config.hold_probe.initial
        row = HoldRow(pipeline, stage, time.time(), reason, delay)
        with self.holds_rows.db.joined():
            self.holds_rows.hold(row)
        self.held[pipeline] = Hold(row, time.monotonic() + delay, most=config.hold_probe.max)
        self._streaks.pop((pipeline, stage), None)
        self._say("warning", "pipeline.held", pipeline=pipeline, stage=stage, reason=reason)
        self.metrics.pipeline_held(pipeline, True)
        self._reclose(pipeline)

    def probes_due(self, mono: float) -> list[tuple[str, str]]:
        """(pipeline, stage) of the held pipelines whose probe is due and not running."""
        return [
            (p, h.row.stage)
            for p, h in self.held.items()
            if h.probing is None and mono >= h.probe_at and p not in self.paused
        ]

    def probing(self, pipeline: str, item_id: str) -> None:
        self.held[pipeline].probing = item_id

    def probe_ended(
        self, pipeline: str, ok: bool, error: str, config: StageConfig | None, mono: float
    ) -> None:
        """The probe of PIPELINE ended: released if OK, else the next one later."""
        hold = self.held[pipeline]
        hold.probing = None
        if ok:
            with self.holds_rows.db.joined():
                self.holds_rows.release(pipeline)
            del self.held[pipeline]
            held_for = round(time.time() - hold.row.since, 3)
            stage = hold.row.stage
            self._say("info", "pipeline.released", pipeline=pipeline, stage=stage, seconds=held_for)
            self.metrics.pipeline_held(pipeline, False)
            self._reclose(pipeline)
            return
        most = config.hold_probe.max if config is not None else hold.row.probe_delay
        delay = min(most, hold.row.probe_delay * 2)
        with self.holds_rows.db.joined():
            self.holds_rows.probed(pipeline, error, delay)
        hold.row.reason, hold.row.probe_delay = error, delay
        hold.probe_at = mono + delay
        self._say("info", "pipeline.probe_failed", pipeline=pipeline, error=error, next_in=delay)

    def probe_lost(self, pipeline: str, item_id: str) -> None:
        """The probing file ended otherwise (failed for good, vanished): try another."""
        hold = self.held.get(pipeline)
        if hold is not None and hold.probing == item_id:
            hold.probing = None

    def next_probe(self, has_ready: Callable[[str], bool]) -> float | None:
        """When the loop must wake for a probe: the earliest of the held pipelines
        with a file ready to try (one with none has nothing to probe with: a file
        made ready wakes the loop anyway)."""
        due = [
            h.probe_at
            for p, h in self.held.items()
            if h.probing is None and p not in self.paused and has_ready(p)
        ]
        return min(due) if due else None

    def reconfigured(self, routes: Routes) -> None:
        """The configuration (at start, or reloaded): a hold whose pipeline or stage is
        no longer configured is released, or no probe could ever end it."""
        for pipeline, hold in list(self.held.items()):
            found = routes.get(pipeline)
            stages = {s.name: s.config for s in found.stages} if found is not None else {}
            if hold.row.stage in stages:
                hold.most = stages[hold.row.stage].hold_probe.max
                continue
            with self.holds_rows.db.joined():
                self.holds_rows.release(pipeline)
            del self.held[pipeline]
            self.log.info(
                "pipeline.released",
                pipeline=pipeline,
                stage=hold.row.stage,
                detail="its stage is no longer configured",
            )
            self.metrics.pipeline_held(pipeline, False)
            self._reclose(pipeline)

    def waiting(self) -> set[str]:
        """The pipelines whose files a batch run (--exit-when-idle) leaves waiting:
        paused ones, and held ones whose probes have backed off all the way."""
        return set(self.paused) | {p for p, h in self.held.items() if h.backed_off}

    def _say(self, level: str, event: str, **fields: Any) -> None:
        """Log EVENT now, or once the transaction it was written in commits (``tell``)."""
        if self.holds_rows.db.in_transaction:
            self._untold.append((level, event, fields))
        else:
            getattr(self.log, level)(event, **fields)

    def tell(self) -> None:
        """The changes written in the transaction just committed, told."""
        untold, self._untold = self._untold, []
        for level, event, fields in untold:
            getattr(self.log, level)(event, **fields)

    def _reclose(self, pipeline: str) -> None:
        if pipeline in self.paused or pipeline in self.held:
            self.closed.add(pipeline)
        else:
            self.closed.discard(pipeline)

    def status(self) -> str:
        """For STATUS=: "paused: a; held: b (at load); " (empty when all go)."""
        parts = []
        if self.paused:
            parts.append(f"paused: {', '.join(sorted(self.paused))}; ")
        if self.held:
            held = (f"{p} (at {h.row.stage})" for p, h in sorted(self.held.items()))
            parts.append(f"held: {', '.join(held)}; ")
        return "".join(parts)


def apply(rows: PauseRows, kind: str, pipeline: str, now: float, reason: str) -> str:
    """Pause or resume PIPELINE in the caller's transaction; the answer."""
    if kind == PAUSE:
        return "paused" if rows.pause(pipeline, now, reason) else "already paused"
    return "resumed" if rows.resume(pipeline) else "not paused"


__all__ = ["PAUSE", "RESUME", "Gates", "apply"]
