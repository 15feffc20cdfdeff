"""The retry policy: a pure function from the attempt number to a delay."""

from __future__ import annotations

import random


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
