"""``dropline status``: what the daemon is doing, from the folders and the state database.

Read-only and never blocking the daemon: the folders are counted with
scandir, the database is read in one short read transaction.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import console as c
from ..config import Config
from ..datalock import lock_holder
from ..globs import compile_globs
from ..state import (
    UNFINISHED,
    AttemptView,
    ItemView,
    StateReader,
    daemon_pid,
    held_pipelines,
    paused_pipelines,
)
from ..toolnames import ToolNames
from .flight import groups as flight_groups
from .flight import render as render_flight
from .waiting import count_folder, held_long, look_at_incoming

RATE_WINDOW = 60.0  # seconds: files/s over the last minute
# ... and over the last few seconds: a burst drained in seconds shows as what
# it is, not as a sixth of it spread over the minute.
RECENT_WINDOW = 10.0
IN_FLIGHT_SHOWN = 20
FAILURES_SHOWN = 5
HELD_SHOWN = 20
REFUSED_SHOWN = 20


def _stage_of(item: ItemView, running: AttemptView | None, config: Config) -> str:
    if running is not None:
        return running.stage
    for pipeline in config.pipelines:
        if pipeline.name == item.pipeline and item.next_stage < len(pipeline.stages):
            return pipeline.stages[item.next_stage].name
    return "-"


def collect(config: Config, now: float | None = None) -> dict[str, Any]:
    """The status as one JSON-ready document."""
    now = time.time() if now is None else now
    ignored = compile_globs(config.ignore)
    rules = ToolNames(config.tool_files)
    names: list[bytes] = []
    incoming, oldest, refused = look_at_incoming(config, ignored, rules, names)
    held = held_long(config, rules, names, now)
    working, _ = count_folder(config.working, ignored, oldest=False)
    pid = daemon_pid(config.state_db)
    # Whoever holds the data folder: this state's daemon, or one of another state.
    holder = lock_holder(config.data_dir)
    with StateReader(config.state_db) as reader, reader.snapshot():
        states = reader.counts()
        recent = reader.finished_since(now - RATE_WINDOW)
        latest = reader.finished_since(now - RECENT_WINDOW)
        flight = reader.in_flight(IN_FLIGHT_SHOWN)
        flight_counts = reader.in_flight_counts(now)
        failures = reader.recent_failures(FAILURES_SHOWN)
        paused = paused_pipelines(reader)
        holding = held_pipelines(reader)
    unfinished = sum(states.get(s, 0) for s in UNFINISHED)
    in_flight = []
    for item, running in flight:
        entry: dict[str, Any] = {
            "item": item.id,
            "file": c.name(item.name),
            "pipeline": item.pipeline,
            "state": item.state,
            "stage": _stage_of(item, running, config),
            "running": running is not None,
            "attempt": running.attempt if running else item.attempt + 1,
            "age_seconds": round(now - item.created_at, 3),
            "stage_seconds": round(now - running.started_at, 3) if running else None,
            "next_attempt_at": c.iso(item.next_attempt_at) if item.next_attempt_at else None,
        }
        in_flight.append(entry)
    done = recent["archived"] + recent["failed"]
    done_lately = latest["archived"] + latest["failed"]
    return {
        "daemon": {"running": pid is not None, "pid": pid, "data_folder_pid": holder},
        "counts": {
            "incoming": incoming,
            "working": working,
            "archived": states.get("archived", 0),
            "failed": states.get("failed", 0),
        },
        "states": states,
        "paused": [
            {"pipeline": p, "since": c.iso(since), "reason": reason or None}
            for p, (since, reason) in sorted(paused.items())
        ],
        "held_pipelines": [
            {"pipeline": p, "stage": stage, "since": c.iso(since), "reason": reason}
            for p, (stage, since, reason) in sorted(holding.items())
        ],
        "backlog": {
            "incoming": incoming,
            "oldest_seconds": round(now - oldest, 3) if oldest is not None else None,
        },
        "refused": {
            "count": len(refused),
            "shown": [{"file": c.name(os.fsencode(n)), "reason": r} for n, r in refused][
                :REFUSED_SHOWN
            ],
        },
        "held": {
            "count": len(held),
            "after_seconds": config.tool_files.held_warning,
            "shown": held[:HELD_SHOWN],
        },
        "in_flight": {
            "count": unfinished,
            "groups": flight_groups(flight_counts, config, now),
            "shown": in_flight,  # running first, then the oldest
        },
        "rate": {
            "window_seconds": RATE_WINDOW,
            "files_per_second": round(done / RATE_WINDOW, 3),
            "archived": recent["archived"],
            "failed": recent["failed"],
            "recent": {
                "window_seconds": RECENT_WINDOW,
                "files_per_second": round(done_lately / RECENT_WINDOW, 3),
                "archived": latest["archived"],
                "failed": latest["failed"],
            },
        },
        "recent_failures": [
            {
                "item": f.id,
                "file": c.name(f.name),
                "pipeline": f.pipeline,
                "reason": f.reason,
                "failed_at": c.iso(f.finished_at),
                "where": "failed/" + c.name(f.final_name) if f.final_name else None,
            }
            for f in failures
        ],
        "data_dir": str(config.data_dir),
        "state_db": str(config.state_db),
        "generated_at": c.iso(now),
    }


def _section(out: c.Console, label: str, group: dict[str, Any], what: str) -> None:
    """A list's first line: LABEL, how many WHAT, and how many of them are shown."""
    out.line()
    shown = len(group["shown"])
    more = f" ({shown} shown)" if group["count"] > shown else ""
    out.line(f"{label:<12}{group['count']:,} {what}{more}")


def render(doc: dict[str, Any], out: c.Console, now: float | None = None) -> None:
    """The status for people."""
    now = time.time() if now is None else now
    daemon = doc["daemon"]
    if daemon["running"]:
        head = out.paint("running", "green") + f" (pid {daemon['pid']})"
    else:
        head = out.paint("not running", "yellow")
        other = daemon.get("data_folder_pid")
        if other is not None:
            head += f" (another dropline, pid {other}, runs on its data folder with another state)"
    out.line(f"dropline {head}; data {doc['data_dir']}, state {doc['state_db']}")
    for p in doc["paused"]:
        since = c.ago(c.parse_iso(p["since"]), now)
        why = f": {p['reason']}" if p["reason"] else ""
        line = f'Paused:     pipeline "{p["pipeline"]}" since {since}{why} (dropline resume)'
        out.line(out.paint(line, "yellow"))
    for h in doc["held_pipelines"]:
        since = c.ago(c.parse_iso(h["since"]), now)
        line = (
            f'Held:       pipeline "{h["pipeline"]}" at stage "{h["stage"]}" since {since}: '
            f"{h['reason']} (one file retries it; the first success releases it)"
        )
        out.line(out.paint(line, "red"))
    out.line()
    counts = doc["counts"]
    out.table(
        ["incoming", "working", "archived", "failed"],
        [[f"{counts[k]:,}" for k in ("incoming", "working", "archived", "failed")]],
        right=(0, 1, 2, 3),
    )
    out.line()
    backlog = doc["backlog"]
    oldest = backlog["oldest_seconds"]
    waiting = f"{backlog['incoming']:,} waiting in incoming/"
    if oldest is not None and backlog["incoming"]:
        waiting += f", the oldest for {c.span(oldest)}"
    rate = doc["rate"]
    out.line(f"Backlog:    {waiting}")
    lately = rate["recent"]
    out.line(
        f"Throughput: {lately['files_per_second']:,.1f} files/s over the last "
        f"{lately['window_seconds']:g} s, {rate['files_per_second']:,.1f} over the last minute "
        f"({rate['archived']:,} archived, {rate['failed']:,} failed)"
    )
    refused = doc["refused"]
    if refused["count"]:
        _section(out, "Refused:", refused, "in incoming/ that dropline will not take")
        rows = [[c.shorten(r["file"], 40), r["reason"]] for r in refused["shown"]]
        out.table(["ENTRY", "REFUSED BECAUSE"], rows)
    held = doc["held"]
    if held["count"]:
        _section(
            out,
            "Held:",
            held,
            "in incoming/ kept waiting by a rule of tool_files "
            f"for over {c.span(held['after_seconds'])}",
        )
        rows = [
            [c.shorten(h["file"], 40), h["rule"], c.span(h["unchanged_seconds"]), h["reason"]]
            for h in held["shown"]
        ]
        out.table(["FILE", "RULE", "UNCHANGED", "WAITS BECAUSE"], rows, right=(2,))
    flight = doc["in_flight"]
    out.line()
    if not flight["count"]:
        out.line("In flight:  none")
    else:
        out.line(f"In flight:  {flight['count']:,}")
        render_flight(flight, out)
    failures = doc["recent_failures"]
    out.line()
    if not failures:
        out.line("Recent failures: none")
        return
    # The failed files are counted apart: the list shows the last few of them.
    total = max(doc["counts"]["failed"], len(failures))
    out.line(
        "Recent failures:"
        if total <= len(failures)
        else f"Recent failures: the last {len(failures)} of {total:,}"
    )
    rows = [
        [
            c.ago(c.parse_iso(f["failed_at"]), now),
            f["item"],
            c.shorten(f["file"], 32),
            f["pipeline"] or "-",
            c.shorten(f["reason"] or "", 60),
        ]
        for f in failures
    ]
    out.table(["WHEN", "ITEM", "FILE", "PIPELINE", "REASON"], rows, colours=["red"] * len(rows))


__all__ = ["collect", "render"]
