"""``dropline top``: what dropline does now, redrawn every second.

Read from the state database read-only (WAL: never in the daemon's way,
whether it runs or not) and a look at incoming/.  Per pipeline: files
ended per second over the last 10 s, and failed in the last hour; per
pipeline and stage: attempts started per second, files running, waiting,
waiting for a retry, and the oldest one's age.  A frame reads index
ranges and the end of the attempts table, never the whole history, so it
costs about the same with a million rows recorded as with none;
incoming/ is counted up to 100,000 entries.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, TextIO

from .. import console as c
from ..config import Config
from ..datalock import lock_holder
from ..globs import compile_globs
from ..state import StateReader, daemon_pid, held_pipelines, paused_pipelines
from .flight import groups as flight_groups

RATE_WINDOW = 10.0  # seconds: the "now" of the rates
RECENT_ATTEMPTS = 50_000  # attempts read back from the table's end, at most
INCOMING_COUNTED = 100_000  # entries of incoming/ counted, at most
FAILED_WINDOW = 3600.0


def _count_incoming(config: Config) -> tuple[int, bool]:
    """Names in incoming/ the daemon would look at, up to INCOMING_COUNTED; and
    whether there are more."""
    ignored = compile_globs(config.ignore)
    count = 0
    try:
        with os.scandir(config.incoming) as entries:
            for entry in entries:
                if ignored.match(entry.name):
                    continue
                count += 1
                if count >= INCOMING_COUNTED:
                    return count, True
    except OSError:
        return 0, False
    return count, False


def collect(config: Config, reader: StateReader, now: float | None = None) -> dict[str, Any]:
    """One frame, as a JSON-ready document."""
    now = time.time() if now is None else now
    incoming, more = _count_incoming(config)
    with reader.snapshot():
        ended = reader.ended_by_pipeline(now - RATE_WINDOW)
        failed_hour = reader.ended_by_pipeline(now - FAILED_WINDOW)
        started = reader.attempts_started(now - RATE_WINDOW, RECENT_ATTEMPTS)
        flight = flight_groups(reader.in_flight_counts(now), config, now)
        paused = paused_pipelines(reader)
        holding = held_pipelines(reader)
    names: list[str | None] = [p.name for p in config.pipelines]
    seen = {p for p, _ in [*ended, *started]} | {g["pipeline"] for g in flight}
    names += sorted((p for p in seen if p not in names), key=lambda p: (p is None, p or ""))
    pipelines = []
    for name in names:
        stages = []
        for group in flight:
            if group["pipeline"] == name:
                rate = started.get((name, group["stage"]), 0) / RATE_WINDOW
                stages.append({**group, "started_per_second": round(rate, 2)})
        for (pipeline, stage), n in started.items():
            if pipeline == name and not any(s["stage"] == stage for s in stages):
                stages.append(
                    {
                        "pipeline": name,
                        "stage": stage,
                        "running": 0,
                        "waiting": 0,
                        "retrying": 0,
                        "oldest_seconds": 0.0,
                        "started_per_second": round(n / RATE_WINDOW, 2),
                    }
                )
        done = {how: ended.get((name, how), 0) for how in ("archived", "failed", "vanished")}
        pipelines.append(
            {
                "pipeline": name,
                "ended_per_second": round(sum(done.values()) / RATE_WINDOW, 2),
                **done,
                "failed_last_hour": failed_hour.get((name, "failed"), 0),
                "paused": name in paused,
                "held_at": holding[name][0] if name in holding else None,
                "stages": stages,
            }
        )
    pid = daemon_pid(config.state_db)
    return {
        "generated_at": c.iso(now),
        "window_seconds": RATE_WINDOW,
        "daemon": {
            "running": pid is not None,
            "pid": pid,
            "data_folder_pid": lock_holder(config.data_dir),
        },
        "incoming": {"count": incoming, "more": more},
        "pipelines": pipelines,
    }


def render(doc: dict[str, Any], out: c.Console) -> None:
    """One frame for people."""
    daemon = doc["daemon"]
    state = (
        out.paint("running", "green") + f" (pid {daemon['pid']})"
        if daemon["running"]
        else out.paint("not running", "yellow")
    )
    stamp = c.stamp(c.parse_iso(doc["generated_at"]))
    out.line(f"dropline {state}   {stamp}   rates over the last {doc['window_seconds']:g} s")
    waiting = doc["incoming"]
    count = f"{waiting['count']:,}" + ("+" if waiting["more"] else "")
    out.line(f"incoming/: {count} waiting")
    out.line()
    rows: list[list[str]] = []
    colours: list[str | None] = []
    for p in doc["pipelines"]:
        failed = p["failed_last_hour"]
        rows.append(
            [
                (p["pipeline"] or "(none)")
                + (" (paused)" if p["paused"] else "")
                + (f" (held at {p['held_at']})" if p["held_at"] else ""),
                "(ended)",
                f"{p['ended_per_second']:,.1f}",
                "",
                "",
                "",
                "",
                f"{failed:,}",
            ]
        )
        colours.append("red" if failed or p["held_at"] else "yellow" if p["paused"] else "bold")
        for s in p["stages"]:
            rows.append(
                [
                    "",
                    s["stage"],
                    f"{s['started_per_second']:,.1f}",
                    f"{s['running']:,}",
                    f"{s['waiting']:,}",
                    f"{s['retrying']:,}",
                    c.span(s["oldest_seconds"]) if s["oldest_seconds"] else "-",
                    "",
                ]
            )
            colours.append(None)
    if not rows:
        out.line("No pipeline has done anything yet.")
        return
    out.table(
        ["PIPELINE", "STAGE", "FILES/S", "RUNNING", "WAITING", "RETRYING", "OLDEST", "FAILED 1H"],
        rows,
        right=(2, 3, 4, 5, 6, 7),
        colours=colours,
    )


def watch(config: Config, reader: StateReader, interval: float, stream: TextIO) -> None:
    """Redraw a frame every INTERVAL seconds on the terminal STREAM until Ctrl-C;
    the screen is given back as it was (the terminal's alternate screen)."""
    import io

    stream.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
    try:
        while True:
            started = time.monotonic()
            frame = io.StringIO()
            # The terminal's width now (a window resized between frames is followed).
            width = shutil.get_terminal_size().columns
            render(collect(config, reader), c.Console(frame, colour=True, width=width))
            stream.write("\x1b[H\x1b[2J" + frame.getvalue() + "\n(Ctrl-C to quit)")
            stream.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    finally:
        stream.write("\x1b[?25h\x1b[?1049l")
        stream.flush()


__all__ = ["collect", "render", "watch"]
