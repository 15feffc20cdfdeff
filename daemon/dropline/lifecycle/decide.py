"""Where the retry is decided: what the end of a stage attempt means.

Pure functions, no I/O: the loop (``loop/scheduler.py``) asks ``decide`` when
an attempt ends, and recovery asks ``interrupted`` of every attempt a crash
or a stop left open, so both apply one rule.

The verdicts:

- ``next``: it succeeded; the file goes on to its next stage;
- ``retry``: it failed and has retries left; run again after ``delay``;
- ``fail``: it failed for good; the file fails for ``reason`` (its
  ``on_failure`` stages first, if its pipeline has any);
- ``go_on``: an ``on_failure`` stage failed for good; recorded, the file's
  own failure stands and its next ``on_failure`` stage runs;
- ``interrupted``: dropline stopped it; not the stage's failure, it runs
  again after the restart;
- ``indeterminate``: dropline stopped a stage that is not idempotent; it may
  have done part of its work, so it is not run again and the file fails;
- ``held``: the stage failed for want of its downstream, not for this file
  (its pipeline holds, or it was the hold's probe: ``loop/gates.py``); not
  counted, the file waits for the stage again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

Verdict = Literal["next", "retry", "fail", "go_on", "interrupted", "indeterminate", "held"]

# What the attempt's row records for each verdict.
ATTEMPT_OUTCOME: dict[Verdict, str] = {
    "next": "succeeded",
    "retry": "retrying",
    "fail": "failed",
    "go_on": "failed",
    "interrupted": "interrupted",
    "indeterminate": "indeterminate",
    "held": "held",
}


class RetryPolicy(Protocol):
    """What a stage's configuration says of its retries (``StageConfig`` has it)."""

    @property
    def retries(self) -> int: ...
    @property
    def backoff_initial(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def idempotent(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    failures: int  # failed attempts of this stage, this one included
    delay: float = 0.0  # seconds before the retry
    reason: str = ""  # why the file fails (fail, indeterminate)
    kind: str = ""  # "permanent error" or "failed after N attempt(s)" (fail, go_on)

    @property
    def attempt_outcome(self) -> str:
        return ATTEMPT_OUTCOME[self.verdict]


def compute_backoff(
    failures: int, initial: float, maximum: float, rand: random.Random | None = None
) -> float:
    """Delay before the next attempt after FAILURES failed ones (1 for the first).

    Exponential (initial, 2x, 4x, ...) capped at MAXIMUM, with "equal jitter":
    half the delay is fixed, half random, so retries of many files spread out
    without any of them coming back almost at once.
    """
    exponent = min(max(failures - 1, 0), 62)
    delay = min(maximum, initial * (2**exponent))
    r = float((rand or random).random())
    return float(delay / 2 + r * delay / 2)


def interrupted(stage: str, config: RetryPolicy | None, failures: int) -> Decision:
    """An attempt dropline stopped (a stop past its timeout, or a crash)."""
    if config is not None and not config.idempotent:
        # Stopped half-way, a non-idempotent stage may have done part of its work.
        reason = (
            f'indeterminate: stage "{stage}" is not idempotent and was '
            "interrupted (crash or stop); it is not run again"
        )
        return Decision("indeterminate", failures + 1, reason=reason)
    return Decision("interrupted", failures)


def decide(
    outcome: str,
    error: str,
    *,
    stage: str,
    config: RetryPolicy | None,
    failures: int,
    stopped: bool,
    failing: bool,
    rand: random.Random | None = None,
) -> Decision:
    """What an attempt that ended with OUTCOME means.

    FAILURES: failed attempts of this stage before this one.  STOPPED: dropline
    cancelled it while stopping.  FAILING: the file failed already and this is
    one of its ``on_failure`` stages.  CONFIG is None for a stage no longer
    configured (after a reload): it gets no retry.
    """
    if outcome == "succeeded":
        return Decision("next", 0)
    if stopped:
        return interrupted(stage, config, failures)
    failures += 1
    retries = config.retries if config is not None else 0
    # "unavailable" reaches here only where no hold takes it (hold_after: 0, an
    # on_failure stage): an ordinary failure then.
    retried = outcome in ("failed", "timeout", "unavailable")
    if retried and failures <= retries and config is not None:
        delay = compute_backoff(failures, config.backoff_initial, config.backoff_max, rand)
        return Decision("retry", failures, delay=delay)
    kind = "permanent error" if outcome == "permanent" else f"failed after {failures} attempt(s)"
    if failing:
        return Decision("go_on", failures, kind=kind)
    return Decision("fail", failures, reason=f"{stage}: {kind}: {error}", kind=kind)
