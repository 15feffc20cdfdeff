"""A CPU-bound Python stage for the benchmark: pure Python arithmetic, holding the GIL.

Copied into a temporary ``pipelines_dir`` and configured as
``python: "cpu_stage:Burn"`` with ``with: {rounds: N}``; the benchmark picks N
so that one call takes about 20 ms of CPU (``calibrate``).  Pure Python on
purpose: hashlib or zlib would release the GIL and run in parallel even in
threads, hiding what worker processes are for.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]


def burn(rounds: int) -> int:
    """ROUNDS steps of a small integer recurrence: CPU work with the GIL held."""
    x = 1
    for i in range(rounds):
        x = (x * 1_103_515_245 + i) & 0x7FFFFFFF
    return x


class Burn:
    """The stage: ``burn(rounds)`` on every file, whatever it holds."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.rounds = int(options.get("rounds", 100_000))

    def __call__(self, ctx: Any) -> dict[str, int]:
        return {"burn": burn(self.rounds)}


def calibrate(target_ms: float, samples: int = 5) -> int:
    """How many rounds take about TARGET_MS of CPU in this interpreter (median of SAMPLES)."""
    probe = 20_000
    rates = []
    for _ in range(samples):
        started = time.process_time()
        burn(probe)
        elapsed = time.process_time() - started
        if elapsed > 0:
            rates.append(probe / elapsed)
    rates.sort()
    per_second = rates[len(rates) // 2] if rates else 5_000_000.0
    return max(1, round(per_second * target_ms / 1000))


def plain_processes(rounds: int, calls: int, processes: int) -> float | None:
    """Calls per second of PROCESSES plain interpreters started together, sharing
    CALLS calls of ``burn(rounds)``: what the machine itself gives two workers
    (two cores of a shared machine may not be two cores' worth).  None if one failed."""
    each = calls // processes
    command = [sys.executable, "-m", "tests.bench.cpu_stage", str(rounds), str(each)]
    started = time.perf_counter()
    running = [subprocess.Popen(command, cwd=_REPO) for _ in range(processes)]
    codes = [p.wait() for p in running]
    elapsed = time.perf_counter() - started
    return each * processes / elapsed if not any(codes) and elapsed > 0 else None


if __name__ == "__main__":  # python -m tests.bench.cpu_stage ROUNDS CALLS
    for _ in range(int(sys.argv[2])):
        burn(int(sys.argv[1]))
