"""Where the retry is decided: the pure rule the loop and recovery share."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from dropline.lifecycle.decide import compute_backoff, decide, interrupted


@dataclass(frozen=True)
class Policy:
    retries: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    idempotent: bool = True


def _stage(**kw: Any) -> Policy:
    return Policy(**kw)


@pytest.mark.parametrize(
    ("outcome", "failures", "retries", "failing", "verdict", "attempt_outcome"),
    [
        ("succeeded", 2, 3, False, "next", "succeeded"),
        ("failed", 0, 3, False, "retry", "retrying"),
        ("timeout", 2, 3, False, "retry", "retrying"),
        ("failed", 3, 3, False, "fail", "failed"),
        ("permanent", 0, 3, False, "fail", "failed"),
        ("failed", 0, 0, True, "go_on", "failed"),
        ("failed", 0, 1, True, "retry", "retrying"),
    ],
)
def test_what_the_end_of_an_attempt_means(
    outcome: str, failures: int, retries: int, failing: bool, verdict: str, attempt_outcome: str
) -> None:
    d = decide(
        outcome,
        "boom",
        stage="load",
        config=_stage(retries=retries),
        failures=failures,
        stopped=False,
        failing=failing,
    )
    assert (d.verdict, d.attempt_outcome) == (verdict, attempt_outcome)


def test_a_final_failure_names_the_stage_the_kind_and_the_error() -> None:
    d = decide(
        "failed",
        "exit 1",
        stage="load",
        config=_stage(retries=1),
        failures=1,
        stopped=False,
        failing=False,
    )
    assert (d.failures, d.reason) == (2, "load: failed after 2 attempt(s): exit 1")
    d = decide(
        "permanent", "bad", stage="load", config=_stage(), failures=0, stopped=False, failing=False
    )
    assert d.reason == "load: permanent error: bad"


def test_a_stage_no_longer_configured_gets_no_retry() -> None:
    d = decide("failed", "x", stage="gone", config=None, failures=0, stopped=False, failing=False)
    assert d.verdict == "fail"


def test_a_stop_interrupts_an_idempotent_stage_and_fails_a_non_idempotent_one() -> None:
    for stopped_outcome in ("failed", "timeout"):
        d = decide(
            stopped_outcome,
            "killed",
            stage="load",
            config=_stage(),
            failures=1,
            stopped=True,
            failing=False,
        )
        assert (d.verdict, d.failures) == ("interrupted", 1)
    d = interrupted("load", _stage(idempotent=False), 1)
    assert (d.verdict, d.attempt_outcome, d.failures) == ("indeterminate", "indeterminate", 2)
    assert d.reason.startswith('indeterminate: stage "load" is not idempotent')


def test_the_retry_delay_grows_and_is_capped_with_jitter() -> None:
    rand = random.Random(7)
    delays = [compute_backoff(n, 1.0, 10.0, rand) for n in range(1, 8)]
    caps = [1, 2, 4, 8, 10, 10, 10]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    d = decide(
        "failed",
        "x",
        stage="load",
        config=_stage(retries=9, backoff_initial=4.0, backoff_max=4.0),
        failures=0,
        stopped=False,
        failing=False,
    )
    assert 2.0 <= d.delay <= 4.0
