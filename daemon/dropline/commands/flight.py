"""``dropline status``'s files in flight, grouped by pipeline and stage with counts.

A backlog of a thousand files waiting for one stage is one line (how many
run, wait, wait for a retry, and how old the oldest is), not a thousand
identical rows.  Read-only, from the counts the state reader gives.
"""

from __future__ import annotations

from typing import Any

from .. import console as c
from ..config import Config
from ..state.reader import FlightCount

# Files between two folders (claimed or ending) have no stage: shown by what they do.
_MOVING = {
    "claiming": "(being claimed)",
    "finishing": "(ending)",
    "requeuing": "(requeued)",
    "replaying": "(replayed)",
}


def _stage_name(count: FlightCount, config: Config) -> tuple[str, int]:
    """The stage a group is at, and where it sorts within its pipeline."""
    if count.state in _MOVING:
        return _MOVING[count.state], -1 if count.state != "finishing" else 1 << 30
    if count.running is not None:
        return count.running, count.next_stage
    for pipeline in config.pipelines:
        if pipeline.name == count.pipeline:
            stages = pipeline.stages + pipeline.on_failure
            if count.next_stage < len(stages):
                return stages[count.next_stage].name, count.next_stage
    return "-", 1 << 29  # nothing left to run: ends at the next pass


def groups(counts: list[FlightCount], config: Config, now: float) -> list[dict[str, Any]]:
    """One entry per pipeline and stage: running, waiting (for a worker, or to move
    on), retrying (a retry not due yet), and the age of the oldest file."""
    order = {p.name: n for n, p in enumerate(config.pipelines)}
    merged: dict[tuple[str | None, str], dict[str, Any]] = {}
    rank: dict[tuple[str | None, str], tuple[int, int]] = {}
    for count in counts:
        stage, at = _stage_name(count, config)
        key = (count.pipeline, stage)
        group = merged.get(key)
        if group is None:
            group = merged[key] = {
                "pipeline": count.pipeline,
                "stage": stage,
                "running": 0,
                "waiting": 0,
                "retrying": 0,
                "oldest_seconds": 0.0,
            }
            pipeline_rank = order.get(count.pipeline or "", len(order))
            rank[key] = (pipeline_rank, at)
        kind = "running" if count.running else "retrying" if count.retrying else "waiting"
        group[kind] += count.count
        group["oldest_seconds"] = max(group["oldest_seconds"], round(now - count.oldest, 3))
    return [merged[key] for key in sorted(merged, key=lambda k: (rank[k], k[1]))]


def render(flight: dict[str, Any], out: c.Console) -> None:
    """The groups, then the files running a stage now."""
    rows = [
        [
            g["pipeline"] or "-",
            g["stage"],
            f"{g['running']:,}",
            f"{g['waiting']:,}",
            f"{g['retrying']:,}",
            c.span(g["oldest_seconds"]),
        ]
        for g in flight["groups"]
    ]
    out.table(
        ["PIPELINE", "STAGE", "RUNNING", "WAITING", "RETRYING", "OLDEST"], rows, right=(2, 3, 4, 5)
    )
    running = [f for f in flight["shown"] if f["running"]]
    if not running:
        return
    out.line()
    out.line("Running now:")
    rows = [
        [
            f["item"],
            c.shorten(f["file"], 40),
            f["pipeline"] or "-",
            f["stage"],
            str(f["attempt"]),
            c.span(f["stage_seconds"]),
        ]
        for f in running
    ]
    out.table(["ITEM", "FILE", "PIPELINE", "STAGE", "TRY", "FOR"], rows, right=(4, 5))


__all__ = ["groups", "render"]
