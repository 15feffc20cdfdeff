"""The Python stages of the stage workloads, copied into a temporary ``pipelines_dir``.

``trivial`` returns a dict and reads nothing: what is measured is what
running a Python stage costs, not the stage.  ``slow`` sleeps 50 ms (or
``DROPLINE_BENCH_SLOW_MS``): the slow pipeline of the fairness case.
"""

from __future__ import annotations

import os
import time
from typing import Any

_SLOW_S = float(os.environ.get("DROPLINE_BENCH_SLOW_MS", "50")) / 1000


def trivial(ctx: Any) -> dict[str, str]:
    """A dict, as the Python script's function returns."""
    return {"seen": str(ctx.name)}


def slow(ctx: Any) -> dict[str, float]:
    """A stage that takes 50 ms of wall time and no CPU."""
    time.sleep(_SLOW_S)
    return {"slept": _SLOW_S}
